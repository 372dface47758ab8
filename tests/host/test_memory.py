import os
from pathlib import Path

from kvmworker.inventory.memory import MemoryInventory
from kvmworker.protocol.codes import Code
from tests.host.conftest import host_handler


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/meminfo")


def test_total_memory_is_memtotal_of_proc_meminfo(call):
    reply = call(host_handler(), "memory")
    assert reply.code == Code.OK
    assert reply.data["ram"]["total"] == _meminfo_kb("MemTotal") * 1024
    assert reply.data["swap"]["total"] == _meminfo_kb("SwapTotal") * 1024


def test_the_figures_are_consistent_with_each_other():
    ram = MemoryInventory().read()["ram"]
    assert 0 < ram["available"] <= ram["total"]
    assert 0 <= ram["used"] <= ram["total"]
    assert 0.0 <= ram["used_percent"] <= 100.0


def test_every_huge_page_size_of_the_kernel_is_listed():
    sizes = [d for d in os.listdir("/sys/kernel/mm/hugepages") if d.startswith("hugepages-")]
    listed = MemoryInventory().read()["hugepages"]["sizes"]
    assert sorted(s["size"] for s in listed) == sorted(int(d[10:-2]) * 1024 for d in sizes)


def test_ksm_is_null_on_a_kernel_without_it_and_read_where_present(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 1024 kB\nMemFree: 512 kB\nMemAvailable: 768 kB\n")
    assert MemoryInventory(proc=tmp_path, sys=tmp_path).read()["ksm"] is None
    ksm = tmp_path / "kernel/mm/ksm"
    ksm.mkdir(parents=True)
    (ksm / "run").write_text("1\n")
    (ksm / "pages_sharing").write_text("42\n")
    read = MemoryInventory(proc=tmp_path, sys=tmp_path).read()
    assert read["ksm"]["run"] == 1 and read["ksm"]["pages_sharing"] == 42 and read["ksm"]["full_scans"] is None
    assert read["ram"]["buffers"] is None and read["ram"]["used_percent"] == 25.0


def test_a_missing_meminfo_is_a_memory_info_failure(call, tmp_path):
    reply = call(host_handler(memory=MemoryInventory(proc=tmp_path)), "memory")
    assert reply.code == Code.MEMORY_INFO_FAILED == 40101
    assert "meminfo" in reply.data["detail"]


def test_a_meminfo_without_memtotal_is_a_memory_info_failure(call, tmp_path):
    (tmp_path / "meminfo").write_text("MemFree: 512 kB\n")
    reply = call(host_handler(memory=MemoryInventory(proc=tmp_path)), "memory")
    assert reply.code == Code.MEMORY_INFO_FAILED
