"""VM lifecycle events from a real TCG guest on the real libvirtd: commands, the guest itself, virsh."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events import Causes, Events
from kvmworker.events.buffer import EventBuffer
from kvmworker.events.emitter import Emitter
from tests.vm.conftest import (
    SYSTEM_URI,
    caller,
    guest_xml,
    pipeline_with_events,
    require_libvirtd,
    serial_log,
    virsh,
    vm_name,
    wait_for_ready_line,
)
from tests.vm.events import EventLog, lifecycle_of

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]

WINDOW_S = 1.0
"""How long after a command its events are traced to it: short here, so that what virsh does seconds later
is clearly nobody's command (the worker's default is 5 s)."""


@pytest.fixture
def events(tmp_path: Path) -> Events:
    buffer = EventBuffer.in_state_dir(tmp_path / "events")
    return Events(Emitter("kvt-host", buffer), causes=Causes(window=WINDOW_S))


@pytest.fixture
def log(events: Events) -> EventLog:
    return EventLog(events)


@pytest.fixture
def worker(images: Path, events: Events) -> Iterator[Pipeline]:
    require_libvirtd()
    yield from pipeline_with_events(images, SYSTEM_URI, events)


def test_a_guest_started_paused_powered_off_by_itself_and_destroyed_by_virsh_is_told_in_order(
    worker, log, events, vms, guest
):
    call, name = caller(worker), vm_name()
    vms.append(name)
    ids = {c: str(uuid.uuid4()) for c in ("define", "start", "suspend", "resume", "shutdown", "undefine")}

    assert call("define", msg_id=ids["define"], xml=guest_xml(name, guest)).code == 0
    assert call("start", msg_id=ids["start"], name=name).code == 0
    wait_for_ready_line(name)
    assert events.pictures.snapshot()["vms"][name] == "running"
    assert call("suspend", msg_id=ids["suspend"], name=name).code == 0
    assert call("resume", msg_id=ids["resume"], name=name).code == 0

    # The power button pressed behind the worker's back: the guest's acpid powers it off.
    virsh("shutdown", "--mode", "acpi", name)
    log.wait_for(lifecycle_of(name, "stopped"))
    assert "KVMWORKER-GUEST-POWEROFF" in serial_log(name).read_text(errors="replace")

    virsh("start", name)
    wait_for_ready_line(name)
    assert call("shutdown", msg_id=ids["shutdown"], name=name, timeout=60).code == 0

    virsh("start", name)
    wait_for_ready_line(name)  # and the shutdown command's window is long past
    virsh("destroy", name)
    log.wait_for(lifecycle_of(name, "stopped", "destroyed"))
    assert call("undefine", msg_id=ids["undefine"], name=name).code == 0
    log.wait_for(lifecycle_of(name, "undefined"))

    booted = [("resumed", "unpaused"), ("started", "booted")]  # QEMU starts paused, then runs
    told = log.lifecycle(name)
    # destroy is a SIGTERM to QEMU, which QEMU reports as a shutdown "host" asked for, when libvirt reads that
    # report before the process ends: both are published, as libvirt tells them.
    destroyed = told.index(("stopped", "destroyed", None))
    if told[destroyed - 1] == ("shutdown", "host", None):
        del told[destroyed - 1]
    assert told == [
        ("defined", "added", ids["define"]),
        *[(*e, ids["start"]) for e in booted],
        ("suspended", "paused", ids["suspend"]),
        ("resumed", "unpaused", ids["resume"]),
        ("shutdown", "guest", None),
        ("stopped", "shutdown", None),
        *[(*e, None) for e in booted],
        ("shutdown", "guest", ids["shutdown"]),
        ("stopped", "shutdown", ids["shutdown"]),
        *[(*e, None) for e in booted],
        ("stopped", "destroyed", None),
        ("undefined", "removed", ids["undefine"]),
    ]
    published = log.of(name)
    assert [e.previous for e in published[1:]] == [e.data["vm_state"] for e in published[:-1]]
    assert published[-2].data["vm_state"] == "shutoff" and "vm_state" not in published[-1].data


def test_a_vm_defined_and_undefined_with_virsh_is_told_without_msg_id(worker, log, vms, tmp_path):
    name = vm_name()
    vms.append(name)
    xml = tmp_path / "domain.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    caller(worker)("list")  # the worker is connected before virsh acts
    virsh("define", str(xml))
    virsh("undefine", name)
    log.wait_for(lifecycle_of(name, "undefined"))
    assert log.lifecycle(name) == [("defined", "added", None), ("undefined", "removed", None)]
