"""VmHandler on the real libvirtd with real guests, checked against virsh independently."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.vm import VmHandler
from kvmworker.netplane.naming import bridge_name
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.storage import StorageRules
from tests.vm.conftest import SYSTEM_URI, caller, guest_xml, virsh, vm_name, wait_for_ready_line

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


def test_a_guest_lives_through_define_start_info_suspend_resume_shutdown_undefine(system_call, vms, guest):
    name = vm_name()
    vms.append(name)
    defined = system_call("define", xml=guest_xml(name, guest))
    assert defined.code == 0, defined.data
    assert system_call("start", name=name).data["state"] == "running"
    wait_for_ready_line(name)

    info = system_call("info", name=name).data
    dominfo = virsh("dominfo", name)
    assert f"UUID:           {info['uuid']}" in dominfo
    assert (info["state"], info["vcpus"], info["memory_mib"]) == ("running", 1, 96)
    assert "Max memory:     98304 KiB" in dominfo and info["cpu_time_ns"] > 0

    assert system_call("suspend", name=name).data["state"] == "paused"
    assert virsh("domstate", name).strip() == "paused"
    assert system_call("resume", name=name).data["state"] == "running"
    assert virsh("domstate", name).strip() == "running"

    started = time.monotonic()
    reply = system_call("shutdown", name=name, timeout=30)
    assert reply.code == 0, reply.data
    assert reply.data["forced"] is False and time.monotonic() - started < 30
    assert virsh("domstate", name).strip() == "shut off"

    assert system_call("undefine", name=name).data["undefined"] is True
    assert name not in virsh("list", "--all", "--name").split()


def test_a_guest_ignoring_acpi_is_30008_with_its_state_before_the_callers_deadline_and_force_ends_it(system_call, vms):
    name = vm_name()
    vms.append(name)
    # No OS: the BIOS finds nothing to boot and never answers the power button.
    assert system_call("define", name=name, memory_mib=32).code == 0
    assert system_call("start", name=name).code == 0

    started = time.monotonic()
    reply = system_call("shutdown", name=name, timeout=2)
    assert reply.code == 30008 and reply.data["state"] == "running"
    assert 2 <= time.monotonic() - started < 10
    assert virsh("domstate", name).strip() == "running"

    started = time.monotonic()
    hurried = system_call("shutdown", name=name, timeout=60, envelope_timeout=3)
    assert hurried.code == 30008 and time.monotonic() - started < 3  # answered before the caller gives up

    forced = system_call("shutdown", name=name, timeout=1, force=True)
    assert forced.code == 0 and forced.data["forced"] is True and forced.data["state"] == "shutoff"
    assert virsh("domstate", name).strip() == "shut off"


@pytest.fixture
def network_bridge():
    """The bridge NetworkHandler would create for a network, made here so the test owns it."""
    network_id = str(uuid.uuid4())
    name = bridge_name(network_id)
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    yield network_id, name
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


def test_a_vm_on_a_network_has_its_tap_enslaved_to_that_networks_bridge(system_call, vms, network_bridge):
    network_id, bridge = network_bridge
    name = vm_name()
    vms.append(name)
    defined = system_call("define", name=name, memory_mib=32, interfaces=[{"network_id": network_id}])
    assert defined.code == 0, defined.data
    assert system_call("start", name=name).code == 0
    (nic,) = system_call("info", name=name).data["interfaces"]
    assert nic["bridge"] == bridge and nic["tap"]
    assert Path(f"/sys/class/net/{nic['tap']}/master").resolve().name == bridge
    assert nic["mac"] in virsh("domiflist", name)


def test_an_interface_attached_to_a_running_vm_gets_a_tap_on_the_bridge_and_a_missing_bridge_is_30003(
    system_call, vms, network_bridge
):
    network_id, bridge = network_bridge
    name = vm_name()
    vms.append(name)
    system_call("define", name=name, memory_mib=32)
    system_call("start", name=name)
    attached = system_call("attach_interface", name=name, network_id=network_id)
    assert attached.code == 0, attached.data
    (nic,) = system_call("info", name=name).data["interfaces"]
    assert nic["mac"] == attached.data["mac"]
    assert Path(f"/sys/class/net/{nic['tap']}/master").resolve().name == bridge
    missing = system_call("attach_interface", name=name, network_id=str(uuid.uuid4()))
    assert missing.code == 30003


def test_console_of_a_running_vm_names_its_serial_pty_and_vnc_port(system_call, vms):
    name = vm_name()
    vms.append(name)
    system_call("define", name=name, memory_mib=32, graphics=True)
    system_call("start", name=name)
    console = system_call("console", name=name).data
    serial = next(c for c in console["consoles"] if c["kind"] == "serial")
    assert serial["path"].startswith("/dev/pts/") and serial["path"] in virsh("ttyconsole", name)
    (vnc,) = console["graphics"]
    assert vnc["type"] == "vnc" and vnc["port"] >= 5900 and f":{vnc['port'] - 5900}" in virsh("vncdisplay", name)


def test_starting_a_vm_whose_network_bridge_is_missing_is_30003_naming_the_bridge(system_call, vms):
    name = vm_name()
    vms.append(name)
    network_id = str(uuid.uuid4())
    system_call("define", name=name, memory_mib=32, interfaces=[{"network_id": network_id}])
    reply = system_call("start", name=name)
    assert reply.code == 30003 and bridge_name(network_id) in reply.data["detail"]
    assert virsh("domstate", name).strip() == "shut off"


def test_an_interface_attached_to_a_stopped_vm_is_in_its_config_and_detached_again(system_call, vms, network_bridge):
    network_id, bridge = network_bridge
    name = vm_name()
    vms.append(name)
    system_call("define", name=name, memory_mib=32)
    attached = system_call("attach_interface", name=name, network_id=network_id, mac="52:54:00:4b:56:01")
    assert attached.code == 0, attached.data
    assert "52:54:00:4b:56:01" in virsh("domiflist", name) and bridge in virsh("domiflist", name)
    assert system_call("detach_interface", name=name, mac="52:54:00:4b:56:01").code == 0
    assert "52:54:00:4b:56:01" not in virsh("domiflist", name)


def _libvirtd_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _start_libvirtd() -> None:
    if _libvirtd_pid() is None:
        subprocess.run(["libvirtd", "-d"], check=True)
    for _ in range(150):
        if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("libvirtd did not come back in 30 s")


@pytest.fixture
def libvirtd_restored():
    """Whatever the test does to libvirtd, it runs again afterwards: the rest of the suite needs it."""
    yield
    _start_libvirtd()


def _stop_libvirtd() -> None:
    pid = _libvirtd_pid()
    assert pid is not None, "libvirtd is not running"
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if _libvirtd_pid() is None:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def test_libvirtd_stopped_is_30009_within_seconds_and_the_same_worker_recovers(
    system_call, vms, guest, libvirtd_restored
):
    name = vm_name()
    vms.append(name)
    system_call("define", xml=guest_xml(name, guest))
    system_call("start", name=name)
    wait_for_ready_line(name)
    _stop_libvirtd()

    started = time.monotonic()
    reply = system_call("list")
    assert reply.code == 30009, reply.data
    assert time.monotonic() - started < 5

    _start_libvirtd()
    assert name in {vm["name"] for vm in system_call("list", state="running").data["vms"]}
    # shutdown waits for the stop event: a quick success shows events flow on the reopened connection
    started = time.monotonic()
    assert system_call("shutdown", name=name, timeout=30).data["state"] == "shutoff"
    assert time.monotonic() - started < 15


def test_a_hung_libvirtd_is_30009_after_the_keepalive_not_a_hang_and_then_recovers(system, images, libvirtd_restored):
    connection = LibvirtConnection(SYSTEM_URI, open_timeout=2, keepalive_interval=1, keepalive_count=2)
    call = caller(Pipeline(HandlerRegistry([VmHandler(connection, StorageRules([images], "default"))])))
    assert call("list").code == 0
    pid = _libvirtd_pid()
    os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        in_flight = call("list")
        assert in_flight.code == 30009 and "keepalive" in in_flight.data["detail"]
        assert time.monotonic() - started < 6
        reopening = call("list")
        assert reopening.code == 30009 and "no answer" in reopening.data["detail"]
    finally:
        os.kill(pid, signal.SIGCONT)
    _start_libvirtd()
    assert call("list").code == 0
    connection.close()
