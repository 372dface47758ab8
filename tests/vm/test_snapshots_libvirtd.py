"""VmHandler snapshots on the real libvirtd: one running disk guest (TCG) shared by the module, plus one VM that
never starts. Checked against virsh independently."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmworker.app import assemble
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.vm import VmHandler
from kvmworker.settings import Settings
from kvmworker.virt.snapshots import FREEZE_TIMEOUT_S
from tests.vm.conftest import (
    SYSTEM_URI,
    Call,
    caller,
    remove_vm,
    require_libvirtd,
    serial_log,
    virsh,
    vm_name,
)
from tests.vm.disk_guest import ask, disk_guest_image, disk_guest_xml, wait_for_line
from tests.vm.guest import CACHE_DIR

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


@pytest.fixture(scope="module")
def snap_dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    require_libvirtd()
    state = tmp_path_factory.mktemp("state")
    settings = Settings(host="kvt-host", libvirt_uri=SYSTEM_URI, storage_dirs=[CACHE_DIR], state_dir=state)
    assembly = assemble(settings)
    yield assembly.pipeline
    assembly.close()


@pytest.fixture(scope="module")
def snap_call(snap_dispatcher: Pipeline) -> Call:
    return caller(snap_dispatcher)


@pytest.fixture(scope="module")
def made() -> Iterator[list[tuple[str, Path]]]:
    """(VM name, its disk) of what this module creates: removed afterwards with their snapshots, whatever happened."""
    created: list[tuple[str, Path]] = []
    yield created
    conn = libvirt.open(SYSTEM_URI)
    try:
        for name, disk in created:
            remove_vm(conn, name)
            disk.unlink(missing_ok=True)
    finally:
        conn.close()


def _define(snap_call: Call, made: list[tuple[str, Path]]) -> str:
    name = vm_name()
    disk = CACHE_DIR / f"{name}.qcow2"
    made.append((name, disk))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    reply = snap_call("define", xml=disk_guest_xml(name, disk_guest_image(), disk))
    assert reply.code == 0, reply.data
    return name


@pytest.fixture(scope="module")
def running(snap_call: Call, made: list[tuple[str, Path]]) -> str:
    """The one guest this module boots: running, its disk seen by its shell."""
    name = _define(snap_call, made)
    assert snap_call("start", name=name).code == 0
    wait_for_line(name, "KVMWORKER-GUEST-READY")
    return name


@pytest.fixture(scope="module")
def stopped(snap_call: Call, made: list[tuple[str, Path]]) -> str:
    return _define(snap_call, made)


def _pty(snap_call: Call, name: str) -> str:
    consoles = snap_call("console", name=name).data["consoles"]
    return next(c["path"] for c in consoles if c["kind"] == "serial" and c["type"] == "pty")


def _write_disk(snap_call: Call, name: str, word: str) -> None:
    """The guest writes ``word`` at the start of its disk, bypassing its cache, and reads it back."""
    token = uuid.uuid4().hex[:6]
    command = (
        f"echo {word} | dd of=/dev/vda bs=512 count=1 conv=sync oflag=direct 2>/dev/null; "
        f"echo READ-{token}:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c {len(word)})"
    )
    ask(_pty(snap_call, name), command, name, f"READ-{token}:{word}")


def _disk_reads(snap_call: Call, name: str) -> str:
    token = uuid.uuid4().hex[:6]
    command = f"echo DISK-{token}:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 8)END"
    ask(_pty(snap_call, name), command, name, f"DISK-{token}:")
    wait_for_line(name, "END", timeout=5)
    path = serial_log(name)
    line = next(ln for ln in path.read_text(errors="replace").splitlines() if f"DISK-{token}:" in ln)
    return line.split(":", 1)[1].split("END")[0]


def test_a_running_guest_reverted_to_its_memory_snapshot_loses_the_later_disk_change_and_runs(snap_call, running):
    _write_disk(snap_call, running, "ORIGINAL")
    taken = snap_call("snapshot_create", name=running, snapshot="before", memory=True, description="before the change")
    assert taken.code == 0, taken.data
    assert (taken.data["state"], taken.data["memory"], taken.data["parent"]) == ("running", True, None)
    assert "before" in virsh("snapshot-list", running, "--name").split()

    _write_disk(snap_call, running, "CHANGED!")
    reverted = snap_call("snapshot_revert", name=running, snapshot="before")
    assert reverted.code == 0, reverted.data
    assert reverted.data["state"] == "running" and virsh("domstate", running).strip() == "running"
    assert _disk_reads(snap_call, running) == "ORIGINAL"  # the guest answers: it runs, and the change is gone

    listed = snap_call("snapshot_list", name=running).data
    assert [(s["snapshot"], s["current"], s["memory"]) for s in listed["snapshots"]] == [("before", True, True)]
    assert listed["snapshots"][0]["description"] == "before the change"


def test_a_repeated_create_is_success_without_a_second_snapshot_and_other_contents_are_30006(snap_call, running):
    first = snap_call("snapshot_create", name=running, snapshot="again", memory=True)
    assert first.code == 0 and first.data["changed"] is True
    repeat = snap_call("snapshot_create", name=running, snapshot="again", memory=True)
    assert repeat.code == 0 and repeat.data["changed"] is False
    assert repeat.data["created_at"] == first.data["created_at"]
    assert virsh("snapshot-list", running, "--name").split().count("again") == 1
    assert snap_call("snapshot_create", name=stopped_name_of(running), snapshot="x").code == 30007
    assert snap_call("snapshot_delete", name=running, snapshot="again").code == 0


def stopped_name_of(name: str) -> str:
    return name + "-none"


def test_quiesce_without_a_guest_agent_is_30004_and_takes_no_snapshot(snap_call, running):
    reply = snap_call("snapshot_create", name=running, snapshot="frozen", memory=True, quiesce=True)
    assert reply.code == 30004 and reply.data["field"] == "quiesce" and "not connected" in reply.data["detail"]
    assert "frozen" not in virsh("snapshot-list", running, "--name").split()
    dry = snap_call("snapshot_create", name=running, snapshot="frozen", memory=True, quiesce=True, dry_run=True)
    assert dry.code == 30004


def test_a_disk_only_snapshot_of_a_running_vm_is_refused_saying_why(snap_call, running):
    reply = snap_call("snapshot_create", name=running, snapshot="diskonly")
    assert reply.code == 30004 and reply.data["field"] == "memory" and "9.9" in reply.data["detail"]


def test_an_unknown_snapshot_is_30011(snap_call, running):
    for command in ("snapshot_revert", "snapshot_delete"):
        reply = snap_call(command, name=running, snapshot="kvt-missing")
        assert reply.code == 30011 and reply.data["field"] == "snapshot"
        assert snap_call(command, name=running, snapshot="kvt-missing", dry_run=True).code == 30011


def test_a_stopped_vm_is_snapshotted_as_a_tree_and_children_are_deleted_only_when_asked(snap_call, stopped):
    assert snap_call("snapshot_create", name=stopped, snapshot="base", memory=True).code == 30004  # not running
    for snapshot in ("base", "child", "grandchild"):
        reply = snap_call("snapshot_create", name=stopped, snapshot=snapshot)
        assert reply.code == 0 and reply.data["state"] == "shutoff" and reply.data["memory"] is False, reply.data
    tree = {s["snapshot"]: s for s in snap_call("snapshot_list", name=stopped).data["snapshots"]}
    assert {n: (s["parent"], s["current"]) for n, s in tree.items()} == {
        "base": (None, False),
        "child": ("base", False),
        "grandchild": ("child", True),
    }
    assert virsh("snapshot-parent", stopped, "grandchild").strip() == "child"

    assert snap_call("snapshot_revert", name=stopped, snapshot="base").data["state"] == "shutoff"
    assert virsh("snapshot-current", stopped, "--name").strip() == "base"

    refused = snap_call("snapshot_delete", name=stopped, snapshot="child")
    assert refused.code == 30004 and refused.data["field"] == "children" and "grandchild" in refused.data["detail"]
    plan = snap_call("snapshot_delete", name=stopped, snapshot="child", children=True, dry_run=True).data["plan"]
    assert plan == [f"delete snapshot grandchild of {stopped}", f"delete snapshot child of {stopped}"]
    assert sorted(virsh("snapshot-list", stopped, "--name").split()) == ["base", "child", "grandchild"]

    deleted = snap_call("snapshot_delete", name=stopped, snapshot="child", children=True)
    assert deleted.code == 0 and deleted.data["deleted"] == ["child", "grandchild"]
    assert snap_call("snapshot_delete", name=stopped, snapshot="base").data["deleted"] == ["base"]  # a leaf
    assert virsh("snapshot-list", stopped, "--name").split() == []
    disk = str(CACHE_DIR / f"{stopped}.qcow2")
    img = subprocess.run(["qemu-img", "snapshot", "-l", "-U", disk], capture_output=True, text=True, check=True)
    assert "base" not in img.stdout  # gone from the qcow2 too, not only from libvirt's metadata


def test_quiesce_with_an_agent_that_never_answers_is_a_bounded_30004_and_takes_no_snapshot(
    snap_dispatcher, snap_call, running
):
    """vdsm#160: a freeze that hangs must not hold the command. The guest opens its agent port and stays silent."""
    token = uuid.uuid4().hex[:6]
    command = f"(sleep 3600 <>$(ls /dev/vport*p1 | head -n1) &) ; echo OPENED-{token}"
    ask(_pty(snap_call, running), command, running, f"OPENED-{token}")
    deadline = time.monotonic() + 15
    while "connected" not in _agent_state(running) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _agent_state(running) == "connected"

    started = time.monotonic()
    reply = snap_call("snapshot_create", name=running, snapshot="hung-freeze", memory=True, quiesce=True)
    took = time.monotonic() - started
    assert reply.code == 30004 and reply.data["field"] == "quiesce", reply.data
    assert took < FREEZE_TIMEOUT_S + 5  # generous: the freeze's own bound, not libvirt's forever
    assert "hung-freeze" not in virsh("snapshot-list", running, "--name").split()
    assert virsh("domstate", running).strip() == "running"

    # Above, libvirt's own 5 s agent timeout answered first; the worker's bound holds below it too.
    handler = next(h for h in snap_dispatcher.registry.handlers if isinstance(h, VmHandler))
    handler.freeze_timeout = 1.5
    try:
        started = time.monotonic()
        reply = snap_call("snapshot_create", name=running, snapshot="hung-freeze", memory=True, quiesce=True)
        took = time.monotonic() - started
    finally:
        handler.freeze_timeout = FREEZE_TIMEOUT_S
    assert reply.code == 30004 and "within 1.5 s" in reply.data["detail"], reply.data
    assert took < 4.5  # generous: 1.5 s bound, not libvirt's 5 s
    assert "hung-freeze" not in virsh("snapshot-list", running, "--name").split()


def _agent_state(name: str) -> str:
    found = re.search(r"name='org.qemu.guest_agent.0' state='(\w+)'", virsh("dumpxml", name))
    return found.group(1) if found else ""
