import gc
import os
import socket

from kvmworker.app import build_registry
from kvmworker.handlers.host import create_host_handler
from kvmworker.inventory.cpu import CpuInventory
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings
from tests.host.conftest import host_handler, while_interfaces_unchanged


def test_summary_names_the_host_and_gives_each_sections_headline(call):
    interfaces, reply = while_interfaces_unchanged(lambda: call(host_handler(), "summary"))
    assert reply.code == Code.OK
    data = reply.data
    assert data["hostname"] == socket.gethostname()
    assert data["kernel"] == os.uname().release
    assert data["uptime_s"] > 0
    assert data["cpu"]["logical"] == os.cpu_count()
    assert data["memory"]["total"] > 0
    assert data["storage"]["root"]["total"] > 0
    assert data["network"]["interfaces"] == len(interfaces)
    assert set(data["services"]) == {"libvirtd", "virtlogd", "kvmworker"}
    assert "numa_nodes" in data["hardware"]


def test_a_failing_section_is_reported_inside_the_summary_and_the_rest_still_answers(call, tmp_path):
    reply = call(host_handler(cpu=CpuInventory(proc=tmp_path)), "summary")
    assert reply.code == Code.OK
    assert reply.data["cpu"]["error"]["code"] == Code.CPU_INFO_FAILED
    assert "cpuinfo" in reply.data["cpu"]["error"]["detail"]
    assert reply.data["memory"]["total"] > 0


def test_the_worker_registers_the_host_handler_with_read_only_commands(tmp_path):
    registry = build_registry(Settings(state_dir=tmp_path, libvirt_uri="test:///default"))
    commands = [c for c in registry.commands() if c.handler == "HostHandler"]
    assert sorted(c.name for c in commands) == sorted(
        ["cpu", "memory", "storage", "network", "hardware", "services", "summary"]
    )
    assert not any(c.spec.mutates for c in commands)


def _open_fds() -> int:
    gc.collect()  # objects of earlier tests waiting for collection would otherwise close their fds mid-count
    return len(os.listdir("/proc/self/fd"))


def test_closing_the_handler_closes_the_sockets_it_opened_itself(tmp_path):
    before = _open_fds()
    handler = create_host_handler(Settings(state_dir=tmp_path, libvirt_uri="test:///default"))
    handler.summary(None, None)  # the netlink sockets the summary keeps open
    assert _open_fds() > before
    handler.close()
    assert _open_fds() == before


def test_a_shared_netlink_pool_is_used_and_left_open(tmp_path):
    pool = NetlinkPool()
    try:
        handler = create_host_handler(Settings(state_dir=tmp_path, libvirt_uri="test:///default"), netlink=pool)
        handler.summary(None, None)
        opened = _open_fds()
        handler.close()
        assert _open_fds() == opened
        assert pool.get().links()
    finally:
        pool.close()


def test_capabilities_say_whether_kvm_guests_can_run_here(tmp_path):
    registry = build_registry(Settings(state_dir=tmp_path, libvirt_uri="test:///default"))
    system = next(h for h in registry.handlers if h.name == "SystemHandler")
    kvm = system.capabilities(None, None)["features"]["kvm"]
    assert kvm["available"] == (os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK))
    assert kvm["kvm_device"] == os.path.exists("/dev/kvm")
