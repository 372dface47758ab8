import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmworker.inventory.services import ServiceInventory
from kvmworker.inventory.systemd import SystemdUnits
from kvmworker.protocol.codes import Code
from tests.host.conftest import host_handler, unique
from tests.host.systemd_bus import FakeSystemd, PrivateBus, dbus_daemon_available

SYSTEMD_RUNS = Path("/run/systemd/system").is_dir()


def _pids_named(name: str) -> list[int]:
    """Independently of psutil: /proc/<pid>/comm."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == name:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(SYSTEMD_RUNS, reason="systemd runs here: states come from D-Bus, not the process table")
def test_without_systemd_each_default_service_is_unknown_with_the_reason_and_its_process(call):
    reply = call(host_handler(), "services")
    assert reply.code == Code.OK and reply.data["systemd"] is False
    services = {s["name"]: s for s in reply.data["services"]}
    assert list(services) == ["libvirtd", "virtlogd", "kvmworker"]
    for name in ("libvirtd", "virtlogd"):
        assert services[name]["state"] == "unknown"
        assert "systemd is not running" in services[name]["reason"]
        assert services[name]["process_running"] == bool(_pids_named(name))
        assert set(_pids_named(name)) <= set(services[name]["pids"])


def test_named_units_are_added_to_the_defaults_once(call, tmp_path):
    absent = unique("kvtsvc")
    inventory = ServiceInventory(run=tmp_path)
    reply = call(host_handler(services=inventory), "services", {"names": [absent, "libvirtd", "nginx.socket"]})
    assert [s["unit"] for s in reply.data["services"]] == [
        "libvirtd.service",
        "virtlogd.service",
        "kvmworker.service",
        f"{absent}.service",
        "nginx.socket",
    ]
    named = reply.data["services"][3]
    assert (named["name"], named["state"], named["process_running"], named["pids"]) == (absent, "unknown", False, [])


def test_a_process_run_by_an_interpreter_is_matched_by_its_module(tmp_path):
    module = unique("kvtsvc")
    (tmp_path / f"{module}.py").write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=tmp_path)
    try:  # Popen returns once the child has exec'd: its command line is already there
        found = ServiceInventory(run=tmp_path, defaults=(module,)).read()
    finally:
        proc.kill()
        proc.wait()
    (service,) = found["services"]
    assert service["unit"] == f"{module}.service"
    assert service["process_running"] is True and service["pids"] == [proc.pid]


def test_a_unit_name_that_systemd_would_refuse_is_an_invalid_parameter(call):
    reply = call(host_handler(), "services", {"names": ["../etc/passwd"]})
    assert reply.code == Code.INVALID_PARAMETER
    assert reply.data["field"].startswith("names")


def test_an_unreachable_system_bus_is_a_service_info_failure(call, tmp_path):
    (tmp_path / "systemd/system").mkdir(parents=True)  # as on a host booted with systemd
    systemd = SystemdUnits(bus_address=f"unix:path={tmp_path}/no-bus", timeout=1)
    reply = call(host_handler(services=ServiceInventory(run=tmp_path, systemd=systemd)), "services")
    assert reply.code == Code.SERVICE_INFO_FAILED == 40501
    assert "no-bus" in reply.data["detail"]


SYSTEMD_UNITS = {
    "libvirtd.service": {
        "ActiveState": "active",
        "SubState": "running",
        "LoadState": "loaded",
        "UnitFileState": "enabled",
        "Description": "libvirt legacy monolithic daemon",
        "MainPID": 4321,
    },
}


@pytest.fixture
def systemd_bus(tmp_path):
    if not dbus_daemon_available():
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon)")
    bus = PrivateBus(tmp_path)
    try:
        systemd = FakeSystemd(bus.address, SYSTEMD_UNITS, failing=frozenset({"broken.service"}))
        systemd.start()
        try:
            yield bus
        finally:
            systemd.stop()
    finally:
        bus.close()


def test_with_systemd_states_come_from_its_dbus_api(call, tmp_path, systemd_bus):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    inventory = ServiceInventory(run=tmp_path / "run", systemd=SystemdUnits(systemd_bus.address))
    reply = call(host_handler(services=inventory), "services", {"names": ["broken"]})
    assert reply.code == Code.OK and reply.data["systemd"] is True
    services = {s["name"]: s for s in reply.data["services"]}
    libvirtd = services["libvirtd"]
    assert (libvirtd["state"], libvirtd["sub_state"], libvirtd["enabled"]) == ("active", "running", "enabled")
    assert libvirtd["main_pid"] == 4321 and libvirtd["source"] == "systemd"
    assert services["virtlogd"]["load_state"] == "not-found" and services["virtlogd"]["state"] == "inactive"
    assert services["broken"]["state"] == "unknown" and "NoSuchUnit" in services["broken"]["reason"]
