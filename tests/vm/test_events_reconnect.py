"""libvirtd killed and restarted under a running worker: events resume by themselves, and a sync is asked for.

Against a private libvirtd (tests/vm/private_libvirtd.py), never the machine's: other suites share that one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.events import Events
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.vm_events import start_vm_events
from tests.vm.conftest import vm_name
from tests.vm.events import EventLog, StateCalls, lifecycle_of
from tests.vm.private_libvirtd import PrivateLibvirtd, missing_tools, no_os_domain

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


@pytest.fixture
def daemon() -> Iterator[PrivateLibvirtd]:
    why = missing_tools()
    if why:
        pytest.skip(f"no private libvirtd here: {why}")
    private = PrivateLibvirtd()
    try:
        yield private
    finally:
        private.remove()


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events.create("kvt-host", tmp_path / "events")


def watching(daemon: PrivateLibvirtd, events: Events) -> LibvirtConnection:
    """The worker's VM events on the private daemon, wired as in ``kvmworker worker`` (keepalive 1 s × 2)."""
    connection = LibvirtConnection(daemon.uri, keepalive_interval=1, keepalive_count=2)
    start_vm_events(connection, events)
    return connection


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout} s: {check.__doc__}"
        time.sleep(0.1)


def test_libvirtd_killed_and_restarted_events_resume_without_a_worker_restart_and_a_sync_is_asked_for(
    daemon, events, tmp_path
):
    log, state = EventLog(events), StateCalls(events)
    daemon.start()
    connection = watching(daemon, events)
    name = vm_name()
    try:
        wait_until(lambda: "vms" in events.pictures.snapshot())
        (tmp_path / "vm.xml").write_text(no_os_domain(name))
        daemon.virsh("define", str(tmp_path / "vm.xml"))
        daemon.virsh("start", name)
        log.wait_for(lifecycle_of(name, "started"))

        daemon.kill()
        state.wait_for("degraded")
        os.kill(daemon.qemu_pid(name), signal.SIGKILL)  # the VM ends while nobody can tell: its event is lost
        seen = len(log.events)
        daemon.start()

        # Nothing asks the worker anything: it reconnects by itself, says so, and asks for a sync.
        state.wait_for("request_sync")
        assert state.hooks() == ["degraded", "recovered", "request_sync"]
        assert state.calls[0][1][0] == "libvirt" and state.calls[1][1] == ("libvirt",)

        def picture_tells_the_missed_stop() -> bool:
            """the picture says the VM is shut off"""
            return events.pictures.snapshot()["vms"].get(name) == "shutoff"

        wait_until(picture_tells_the_missed_stop)
        daemon.virsh("start", name)  # a change after the restart reaches the worker: callbacks are registered again
        log.wait_for(lifecycle_of(name, "started", "booted"), after=seen)
        after_restart = [e for e in log.events[seen:] if e.subject == name]
        assert [(e.state, e.reason, e.msg_id) for e in after_restart] == [
            ("resumed", "unpaused", None),
            ("started", "booted", None),
        ]
        assert after_restart[0].previous == "shutoff"  # known from the picture taken on the new connection
    finally:
        connection.close()


def test_a_worker_started_before_libvirtd_is_degraded_until_it_answers_and_then_hears_its_events(
    daemon, events, tmp_path
):
    log, state = EventLog(events), StateCalls(events)
    connection = watching(daemon, events)  # the socket does not exist yet
    name = vm_name()
    try:
        state.wait_for("degraded")
        daemon.start()
        state.wait_for("request_sync")
        (tmp_path / "vm.xml").write_text(no_os_domain(name))
        daemon.virsh("define", str(tmp_path / "vm.xml"))
        defined = log.wait_for(lifecycle_of(name, "defined", "added"))
        assert defined.previous is None and defined.msg_id is None
        assert state.hooks() == ["degraded", "recovered", "request_sync"]  # degraded once, however many retries
    finally:
        connection.close()
