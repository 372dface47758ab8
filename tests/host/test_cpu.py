import os
import time
from pathlib import Path

from kvmworker.inventory.cpu import CpuInventory
from kvmworker.inventory.usage import CpuUsageSampler
from kvmworker.protocol.codes import Code
from tests.host.conftest import host_handler


def test_logical_cpus_are_what_the_os_counts(call):
    reply = call(host_handler(), "cpu")
    assert reply.code == Code.OK and reply.msg == "成功"
    assert reply.data["logical"] == os.cpu_count()
    assert reply.data["online"] == sorted(os.sched_getaffinity(0)) or len(reply.data["online"]) == os.cpu_count()


def test_the_model_and_flags_are_those_of_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    data = CpuInventory().read()
    assert data["model"] == model
    assert ("vmx" in data["flags"] or "svm" in data["flags"]) == (data["virtualization"]["extension"] is not None)


def test_kvm_support_reflects_dev_kvm(tmp_path):
    assert CpuInventory().read()["virtualization"]["kvm_device"] == os.path.exists("/dev/kvm")
    missing = CpuInventory(dev_kvm=tmp_path / "kvm").read()["virtualization"]
    assert missing["kvm_device"] is False and missing["kvm_usable"] is False


def test_usage_is_a_share_of_the_window_since_the_last_reading():
    sampler = CpuUsageSampler()
    time.sleep(0.1)
    usage = sampler.read()
    assert 0.1 <= usage.window_s < 5
    assert 0.0 <= usage.total <= 100.0
    assert len(usage.per_cpu) == os.cpu_count()


def test_usage_sees_a_busy_cpu():
    sampler = CpuUsageSampler()
    deadline = os.times().elapsed + 0.3
    while os.times().elapsed < deadline:
        pass
    usage = sampler.read()
    # one core spun for the whole window: at least most of 1/N of the machine was busy
    assert usage.total >= 100.0 / os.cpu_count() * 0.5


def test_a_second_reading_within_50_ms_repeats_the_first_instead_of_measuring_a_few_jiffies(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  0 0 0 100 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0\n")
    sampler = CpuUsageSampler(proc=tmp_path, clock=iter([0.0, 1.0, 1.01]).__next__)
    stat.write_text("cpu  50 0 0 150 0 0 0 0\ncpu0 50 0 0 150 0 0 0 0\n")
    first = sampler.read()
    stat.write_text("cpu  51 0 0 150 0 0 0 0\ncpu0 51 0 0 150 0 0 0 0\n")
    assert sampler.read() == first and first.total == 50.0


def test_a_reading_before_any_jiffy_passed_is_null_and_keeps_the_baseline(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 0 90 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0\n")
    sampler = CpuUsageSampler(proc=tmp_path, clock=iter([0.0, 1.0, 2.0]).__next__)
    assert sampler.read().total is None
    stat.write_text("cpu  40 0 0 160 0 0 0 0\ncpu0 40 0 0 160 0 0 0 0\n")
    usage = sampler.read()
    assert (usage.total, usage.per_cpu, usage.window_s) == (30.0, [30.0], 2.0)


def test_topology_comes_from_the_tree_it_is_pointed_at(tmp_path):
    blocks = [
        f"processor\t: {i}\nmodel name\t: Fake CPU\nphysical id\t: {i // 2}\ncore id\t: {i % 2}\nflags\t\t: svm\n"
        for i in range(4)
    ]
    (tmp_path / "cpuinfo").write_text("\n".join(blocks))
    (tmp_path / "stat").write_text("cpu  1 0 1 8 0 0 0 0 0 0\ncpu0 1 0 1 8 0 0 0 0 0 0\n")
    data = CpuInventory(proc=tmp_path, sys=tmp_path / "sys", dev_kvm=tmp_path / "kvm").read()
    assert (data["logical"], data["sockets"], data["cores"], data["threads_per_core"]) == (4, 2, 4, 1)
    assert data["virtualization"]["extension"] == "amd-v"
    assert data["load_average"] is None and data["mhz"]["max"] is None


def test_a_missing_cpuinfo_is_a_cpu_info_failure(call, tmp_path):
    reply = call(host_handler(cpu=CpuInventory(proc=tmp_path)), "cpu")
    assert reply.code == Code.CPU_INFO_FAILED == 40001
    assert reply.msg == "获取CPU信息失败"
    assert "cpuinfo" in reply.data["detail"]
