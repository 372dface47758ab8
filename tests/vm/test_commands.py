"""VmHandler commands on libvirt's test driver: fast, no daemon, the real validation and error path."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree as ET

import pytest

from kvmworker.api.vm import VmApi
from kvmworker.dispatch.commands import declared
from kvmworker.netplane.naming import bridge_name
from tests.vm.conftest import vm_name

NETWORK_ID = "5b0503ba-1af4-11ea-baa2-000c2902e179"


def define(call, **spec):
    name = spec.pop("name", None) or vm_name()
    reply = call("define", name=name, memory_mib=64, **spec)
    assert reply.code == 0, reply.data
    return name


def test_list_shows_a_defined_vm_with_its_state_and_filters_by_state(call):
    name = define(call)
    assert call("start", name=name).code == 0
    running = {vm["name"]: vm for vm in call("list", state="running").data["vms"]}
    assert running[name]["state"] == "running" and running[name]["id"] is not None
    assert name not in {vm["name"] for vm in call("list", state="shutoff").data["vms"]}
    call("destroy", name=name)
    assert name in {vm["name"] for vm in call("list", state="shutoff").data["vms"]}
    call("undefine", name=name)


def test_an_unknown_vm_is_30007_by_name_and_by_uuid(call):
    assert call("info", name="kvt-missing").code == 30007
    reply = call("start", uuid=str(uuid.uuid4()))
    assert reply.code == 30007 and reply.data["field"] == "uuid"


def test_a_vm_is_addressed_by_name_or_uuid_but_not_neither(call):
    name = define(call)
    vm_uuid = call("info", name=name).data["uuid"]
    assert call("info", uuid=vm_uuid).data["name"] == name
    assert call("info", uuid=vm_uuid, name="kvt-other").code == 30006
    assert call("info").code == 30006
    call("undefine", name=name)


def test_an_interface_on_a_network_id_is_attached_to_that_networks_bridge(call):
    name = define(call, interfaces=[{"network_id": NETWORK_ID, "mac": "52:54:00:aa:bb:01"}])
    (nic,) = call("info", name=name).data["interfaces"]
    assert nic["bridge"] == bridge_name(NETWORK_ID) == "brq5b0503ba-1a"
    assert nic["mac"] == "52:54:00:aa:bb:01" and nic["model"] == "virtio"
    call("undefine", name=name)


def test_define_dry_run_returns_the_xml_and_defines_nothing(call):
    name = vm_name()
    reply = call("define", dry_run=True, name=name, vcpus=2, memory_mib=128, interfaces=[{"bridge": "br-kvt"}])
    assert reply.code == 0 and reply.data["dry_run"] is True
    root = ET.fromstring(reply.data["xml"])
    assert root.findtext("name") == name and root.findtext("vcpu") == "2"
    assert root.find("devices/interface/source").get("bridge") == "br-kvt"
    assert call("info", name=name).code == 30007


def test_define_from_raw_xml_then_undefine(call):
    name = vm_name()
    xml = f"<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory><os><type>hvm</type></os></domain>"
    # the dry run shows the document libvirt would get: the checked tree, re-serialized
    assert ET.canonicalize(call("define", dry_run=True, xml=xml).data["xml"]) == ET.canonicalize(xml)
    assert call("define", xml=xml).data["name"] == name
    assert call("info", name=name).data["memory_mib"] == 32
    assert call("undefine", name=name).data["undefined"] is True
    assert call("info", name=name).code == 30007


def test_malformed_xml_and_a_bad_name_are_30006_before_libvirt_sees_them(call):
    assert call("define", xml="<domain><name>x</name>").code == 30006
    assert call("define", xml="<network><name>x</name></network>").code == 30006
    assert call("define", name="../etc").code == 30006
    assert call("define", xml="<domain><name>x</name></domain>", vcpus=4).code == 30006
    assert call("define", name="kvt-x", interfaces=[{"network_id": NETWORK_ID, "bridge": "br0"}]).code == 30006


def test_defining_a_spec_whose_name_exists_is_refused(call):
    name = define(call)
    reply = call("define", name=name)
    assert reply.code == 30006 and reply.data["field"] == "name"
    call("undefine", name=name)


def test_lifecycle_transitions_report_the_new_state_and_repeat_harmlessly(call):
    name = define(call)
    assert call("start", name=name).data == {**_id(call, name), "state": "running", "changed": True}
    assert call("start", name=name).data["changed"] is False
    assert call("suspend", name=name).data["state"] == "paused"
    assert call("resume", name=name).data["state"] == "running"
    assert call("reboot", name=name).code == 0
    assert call("destroy", name=name).data["state"] == "shutoff"
    assert call("destroy", name=name).data["changed"] is False
    assert call("suspend", name=name).code == 30004
    call("undefine", name=name)


def test_shutdown_waits_for_the_stop_event_and_reports_shutoff(call):
    name = define(call)
    call("start", name=name)
    reply = call("shutdown", name=name, timeout=5)
    assert reply.code == 0 and reply.data["state"] == "shutoff" and reply.data["forced"] is False
    assert call("shutdown", name=name).data["changed"] is False
    call("undefine", name=name)


def test_mutating_commands_in_dry_run_change_nothing(call):
    name = define(call)
    assert call("start", name=name, dry_run=True).data["plan"] == [f"start: {name}"]
    assert call("info", name=name).data["state"] == "shutoff"
    assert call("undefine", name=name, dry_run=True).data["dry_run"] is True
    assert call("info", name=name).code == 0
    call("undefine", name=name)


def test_a_running_vm_cannot_be_undefined(call):
    name = define(call)
    call("start", name=name)
    assert call("undefine", name=name).code == 30004
    call("destroy", name=name)
    call("undefine", name=name)


def test_autostart_is_set_and_reported_by_info(call):
    name = define(call)
    assert call("autostart", name=name, enabled=True).data["autostart"] is True
    assert call("info", name=name).data["autostart"] is True
    assert call("autostart", name=name, enabled=False).data["autostart"] is False
    call("undefine", name=name)


def test_a_command_the_driver_does_not_support_is_30004_not_a_crash(call):
    name = define(call)
    reply = call("attach_interface", name=name, bridge="br-kvt")
    assert reply.code == 30004 and "not supported" in reply.data["detail"]
    call("undefine", name=name)


def test_console_reports_the_serial_console(call):
    name = define(call)
    consoles = call("console", name=name).data["consoles"]
    assert {c["kind"] for c in consoles} == {"serial", "console"}
    call("undefine", name=name)


def test_info_reports_memory_vcpus_disks_and_persistence(call):
    name = define(call, vcpus=2, disks=[{"size_gib": 1, "pool": "default-pool"}])
    info = call("info", name=name).data
    assert (info["vcpus"], info["memory_mib"], info["persistent"], info["state"]) == (2, 64, True, "shutoff")
    (disk,) = info["disks"]
    assert disk["target"] == "vda" and disk["format"] == "qcow2" and disk["source"].endswith(f"{name}-disk0.qcow2")
    call("undefine", name=name, remove_storage=True)


def _id(call, name):
    info = call("info", name=name).data
    return {"name": info["name"], "uuid": info["uuid"]}


def test_commands_on_different_vms_run_at_once_over_the_one_connection(call):
    names = [define(call) for _ in range(8)]

    def lifecycle(name):
        return [call(cmd, name=name).code for cmd in ("start", "suspend", "resume", "info", "destroy", "undefine")]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lifecycle, names))
    assert outcomes == [[0, 0, 0, 0, 0, 0]] * 8


# command → the data of its dry run, given the name of a defined (stopped) VM with one NIC
DRY_RUNS = {
    "start": lambda name: {"name": name},
    "destroy": lambda name: {"name": name},
    "reboot": lambda name: {"name": name},
    "suspend": lambda name: {"name": name},
    "resume": lambda name: {"name": name},
    "shutdown": lambda name: {"name": name, "timeout": 5, "force": True},
    "autostart": lambda name: {"name": name, "enabled": True},
    "define": lambda name: {"name": f"{name}-2", "memory_mib": 64},
    "undefine": lambda name: {"name": name, "remove_storage": True},
    "attach_interface": lambda name: {"name": name, "bridge": "br-kvt"},
    "detach_interface": lambda name: {"name": name, "mac": "52:54:00:aa:bb:02"},
    "snapshot_create": lambda name: {"name": name, "snapshot": "kvt-snap", "description": "dry"},
    "snapshot_revert": lambda name: {"name": name, "snapshot": "kvt-first"},
    "snapshot_delete": lambda name: {"name": name, "snapshot": "kvt-first", "children": True},
    # Only a running VM migrates: the test driver's own running domain "test" (the dry run changes it as little).
    "migrate": lambda name: {"name": "test", "destination": "kvt-elsewhere"},
}


def _first_snapshot(call, name):
    assert call("snapshot_create", name=name, snapshot="kvt-first").code == 0


# what must exist before the dry run can plan (made before the state is taken)
DRY_RUN_SETUP = {"snapshot_revert": _first_snapshot, "snapshot_delete": _first_snapshot}


def test_every_mutating_vm_command_has_a_dry_run_case_here():
    assert {d.name for d in declared(VmApi) if d.spec.mutates} == set(DRY_RUNS)


def vm_state(call, name: str) -> tuple:
    """The VM as info reports it (but the test driver's ever-growing CPU time), and the VMs there are."""
    info = call("info", name=name).data
    info.pop("cpu_time_ns")
    snapshots = call("snapshot_list", name=name).data["snapshots"]
    return info, sorted(vm["name"] for vm in call("list").data["vms"]), snapshots


@pytest.mark.parametrize("command", sorted(DRY_RUNS))
def test_a_dry_run_of_a_mutating_command_answers_its_plan_and_changes_nothing(call, command):
    name = define(call, interfaces=[{"bridge": "br-kvt", "mac": "52:54:00:aa:bb:02"}])
    DRY_RUN_SETUP.get(command, lambda call, name: None)(call, name)
    before = vm_state(call, name)
    reply = call(command, dry_run=True, **DRY_RUNS[command](name))
    assert reply.code == 0, reply.data
    assert reply.data["dry_run"] is True and set(reply.data) <= {"dry_run", "plan", "xml"}
    assert reply.data["plan"] and all(isinstance(step, str) for step in reply.data["plan"])
    assert vm_state(call, name) == before
    call("undefine", name=name)
