"""VM lifecycle events on libvirt's test driver: the names, the order, the msg_id, the picture (fast)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events import Events
from kvmworker.events.state import WorkerState
from kvmworker.virt import lifecycle
from tests.vm.conftest import _pipeline, caller, vm_name
from tests.vm.events import EventLog, lifecycle_of

TEST_URI = "test:///default"
NOWHERE = "qemu+unix:///system?socket=/nonexistent/kvt-libvirt-sock"


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events.create("kvt-host", tmp_path / "events")


@pytest.fixture
def log(events: Events) -> EventLog:
    return EventLog(events)


@pytest.fixture
def worker(images: Path, events: Events) -> Iterator[Pipeline]:
    yield from _pipeline(images, TEST_URI, events=events)


def test_every_lifecycle_event_and_detail_of_libvirt_is_named_as_libvirt_names_it():
    events = {n: getattr(libvirt, n) for n in dir(libvirt) if re.fullmatch(r"VIR_DOMAIN_EVENT_[A-Z]+", n)}
    assert len(events) == 9
    for event_name, event in events.items():
        word = event_name.removeprefix("VIR_DOMAIN_EVENT_")
        details = {n: getattr(libvirt, n) for n in dir(libvirt) if n.startswith(f"{event_name}_")}
        assert details, event_name
        for detail_name, detail in details.items():
            assert lifecycle.names(event, detail) == (word.lower(), detail_name.removeprefix(f"{event_name}_").lower())


def test_an_event_or_detail_newer_than_this_libvirt_is_published_with_its_number():
    assert lifecycle.names(libvirt.VIR_DOMAIN_EVENT_STOPPED, 99) == ("stopped", "detail_99")
    assert lifecycle.names(42, 0) == ("event_42", "detail_0")


def test_each_command_publishes_its_lifecycle_event_with_reason_previous_and_its_msg_id(worker, log):
    call, name = caller(worker), vm_name()
    ids = {command: str(uuid.uuid4()) for command in ("define", "start", "suspend", "resume", "destroy", "undefine")}
    assert call("define", msg_id=ids["define"], name=name, memory_mib=32).code == 0
    for command in ("start", "suspend", "resume", "destroy", "undefine"):
        assert call(command, msg_id=ids[command], name=name).code == 0, command
    log.wait_for(lifecycle_of(name, "undefined"))

    # Commands ran back to back: libvirt delivered some events after the next command had begun.
    assert log.lifecycle(name) == [
        ("defined", "added", ids["define"]),
        ("started", "booted", ids["start"]),
        ("suspended", "paused", ids["suspend"]),
        ("resumed", "unpaused", ids["resume"]),
        ("stopped", "destroyed", ids["destroy"]),
        ("undefined", "removed", ids["undefine"]),
    ]
    published = log.of(name)
    assert [e.previous for e in published] == [None, "shutoff", "running", "paused", "running", "shutoff"]
    assert [e.data.get("vm_state") for e in published] == ["shutoff", "running", "paused", "running", "shutoff", None]
    assert {e.data["uuid"] for e in published} == {published[0].data["uuid"]}
    assert [e.seq for e in published] == sorted(e.seq for e in published)


def test_a_change_made_behind_the_workers_back_right_after_a_command_carries_no_msg_id(worker, log):
    call, name = caller(worker), vm_name()
    started = str(uuid.uuid4())
    call("define", name=name, memory_mib=32)
    assert call("start", msg_id=started, name=name).code == 0
    other = libvirt.open(TEST_URI)  # virsh, or anyone else on this host
    try:
        other.lookupByName(name).destroy()
    finally:
        other.close()
    stopped = log.wait_for(lifecycle_of(name, "stopped"))
    assert (stopped.reason, stopped.msg_id, stopped.previous) == ("destroyed", None, "running")
    assert log.wait_for(lifecycle_of(name, "started")).msg_id == started
    call("undefine", name=name)


def test_the_vms_picture_is_every_domain_and_its_state_as_libvirt_reports_them(worker, events):
    call, name = caller(worker), vm_name()
    call("define", name=name, memory_mib=32)
    call("start", name=name)
    call("suspend", name=name)
    listed = {vm["name"]: vm["state"] for vm in call("list").data["vms"]}
    assert events.pictures.snapshot()["vms"] == listed
    assert listed[name] == "paused" and listed["test"] == "running"  # the test driver's own domain
    call("destroy", name=name)
    call("undefine", name=name)
    assert name not in events.pictures.snapshot()["vms"]


def test_libvirt_unreachable_at_start_is_one_degraded_event_however_often_commands_try_it(images, events, log):
    pipelines = _pipeline(images, NOWHERE, events=events)
    pipeline = next(pipelines)
    state = WorkerState(events.emitter, events.pictures, interval=3600)
    try:
        state.start()
        for _ in range(3):
            assert caller(pipeline)("list").code == 30009
    finally:
        state.stop()
        next(pipelines, None)  # the rest of the fixture: the assembly closes what it built
    told = {e.state: e for e in log.worker_states()}
    assert [e.state for e in log.worker_states()].count("degraded") == 1
    assert told["degraded"].reason.startswith("libvirt: ") and "nonexistent" in told["degraded"].reason
    assert "HypervisorUnavailable" in told["online"].data["errors"]["vms"]
