"""libvirtd killed and restarted under a running worker: events resume by themselves, and a sync is asked for.

Against a private libvirtd (tests/vm/private_libvirtd.py), never the machine's: other suites share that one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvmworker.events import Events
from kvmworker.events.state import WorkerState
from kvmworker.protocol.errors import HypervisorUnavailable
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.vm_events import start_vm_events
from tests.vm.conftest import vm_name
from tests.vm.events import EventLog, lifecycle_of, worker_state
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


@contextmanager
def watching(daemon: PrivateLibvirtd, events: Events, keepalive: dict | None = None) -> Iterator[LibvirtConnection]:
    """The worker's VM events and state on the private daemon, wired as ``kvmworker worker`` wires them
    (``keepalive``: 1 s × 2 unless given; ``{}`` is the worker's own)."""
    keepalive = {"keepalive_interval": 1, "keepalive_count": 2} if keepalive is None else keepalive
    connection = LibvirtConnection(daemon.uri, **keepalive)
    start_vm_events(connection, events)
    state = WorkerState(events.emitter, events.pictures, interval=3600)
    state.start()  # online: its picture opens the connection and keeps it open
    try:
        yield connection
    finally:
        state.stop()
        connection.close()


def test_libvirtd_killed_and_restarted_events_resume_without_a_worker_restart_and_a_sync_follows(
    daemon, events, tmp_path
):
    log, name = EventLog(events), vm_name()
    (tmp_path / "vm.xml").write_text(no_os_domain(name))
    daemon.start()
    with watching(daemon, events):
        daemon.virsh("define", str(tmp_path / "vm.xml"))
        daemon.virsh("start", name)
        log.wait_for(lifecycle_of(name, "started"))

        daemon.kill()
        log.wait_for(worker_state("degraded"))
        os.kill(daemon.qemu_pid(name), signal.SIGKILL)  # the VM ends while nobody can tell: its event is lost
        seen = len(log.events)
        daemon.start()

        # Nothing asks the worker anything: it reconnects by itself, says so, and publishes the picture.
        sync = log.wait_for(worker_state("sync"), after=seen)
        told = log.worker_states()
        assert [(e.state, e.reason) for e in told] == [
            ("online", None),
            ("degraded", "libvirt: connection closed: end of file (libvirtd gone)"),
            ("online", "libvirt: regained"),
            ("sync", "libvirt reconnected"),
        ]
        # The lost stop is told: by the sync's picture, or by libvirt's own event if it noticed after we came back.
        stopped = [e for e in log.events[seen:] if lifecycle_of(name, "stopped")(e)]
        assert sync.data["vms"][name] == "shutoff" or stopped, (sync.data, stopped)

        seen = len(log.events)
        daemon.virsh("start", name)  # a change after the restart reaches the worker: callbacks are registered again
        log.wait_for(lifecycle_of(name, "started", "booted"), after=seen)
        after_restart = [e for e in log.events[seen:] if e.subject == name]
        assert [(e.state, e.reason, e.msg_id) for e in after_restart] == [
            ("resumed", "unpaused", None),
            ("started", "booted", None),
        ]
        assert after_restart[0].previous == "shutoff"  # known from the picture taken on the new connection


def test_a_worker_started_before_libvirtd_is_degraded_until_it_answers_and_then_hears_its_events(
    daemon, events, tmp_path
):
    log, name = EventLog(events), vm_name()
    (tmp_path / "vm.xml").write_text(no_os_domain(name))
    with watching(daemon, events):  # the socket does not exist yet
        assert "vms" in log.wait_for(worker_state("online")).data["errors"]
        daemon.start()
        sync = log.wait_for(worker_state("sync"))
        assert sync.reason == "libvirt reconnected" and sync.data["vms"] == {}
        daemon.virsh("define", str(tmp_path / "vm.xml"))
        defined = log.wait_for(lifecycle_of(name, "defined", "added"))
        assert defined.previous is None and defined.msg_id is None
        states = [e.state for e in log.worker_states()]
        assert states.count("degraded") == 1 and states[-2:] == ["online", "sync"]  # regained, then the picture


def test_a_hung_libvirtd_is_dropped_by_the_workers_own_keepalive_and_picked_up_again_once_it_answers(
    daemon, events, tmp_path
):
    log = EventLog(events)
    daemon.start()
    with watching(daemon, events, keepalive={}) as connection:  # 5 s × 2: about 15 s after its last word
        log.wait_for(worker_state("online"))
        assert no_keeper_thread(), "connected: nothing reconnects"
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            degraded = log.wait_for(worker_state("degraded"), timeout=60)
            assert "keepalive" in degraded.reason, degraded.reason
            with pytest.raises(HypervisorUnavailable):
                connection.open()  # the stopped daemon accepts nothing: the open timeout, not a hang
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        sync = log.wait_for(worker_state("sync"), timeout=60)
        assert sync.reason == "libvirt reconnected"
        assert no_keeper_thread(), "the reconnecting thread ends once libvirt answers again"


def no_keeper_thread(timeout: float = 10.0) -> bool:
    """No thread waits for the next outage (a connected worker has none); it may take a moment to end."""
    deadline = time.monotonic() + timeout
    while any(t.name == "libvirt-keeper" for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
