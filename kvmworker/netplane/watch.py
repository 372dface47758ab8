"""The network watch: netlink's link notifications in the worker's namespace → ``link.state`` and ``network.state``.

One thread of its own waits on the monitor socket (no polling): each notification updates the known links and
publishes the link events at once; networks whose devices changed are judged once the notifications have been
quiet for ``settle`` seconds (50 ms; at most ``max_settle``, 0.5 s, late during a long burst), so that one act
of the kernel (a bridge deleted: set down, its ports released, an RCU grace period, then gone) makes one
``network.state`` event, not one per notification. When a command ends (``Changes``), the networks it worked
on are judged too: created, deleted, restored.

If the kernel drops notifications (an overrun), the watch reads every link afresh, publishes the differences and
asks the worker for a ``sync``: events are hints, the picture is the truth. ``picture()`` (network_id → health)
is read from the kernel, not from what the watch remembers.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmworker.netplane.changes import Done
from kvmworker.netplane.health import health
from kvmworker.netplane.linkstates import LinkStates
from kvmworker.netplane.monitor import LinkMonitor, Overrun
from kvmworker.netplane.networkstates import NetworkStates
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.sink import SYNC_AFTER_OVERRUN, EventSink

if TYPE_CHECKING:
    from kvmworker.events import Events

log = logging.getLogger("kvmworker.netplane")

SETTLE_S = 0.05
MAX_SETTLE_S = 0.5
MonitorOpener = Callable[[str | None], LinkMonitor]


class NetworkWatch:
    """``start()`` subscribes, reads the kernel once and runs the thread; ``stop()`` ends it."""

    def __init__(
        self,
        plane: Netplane,
        emitter: EventSink,
        *,
        open_monitor: MonitorOpener = LinkMonitor.open,
        settle: float = SETTLE_S,
        max_settle: float = MAX_SETTLE_S,
    ):
        self._plane = plane
        self._emitter = emitter
        self.links = LinkStates(plane.physical, emitter, plane.changes)
        self.networks = NetworkStates(plane.store, plane.changes, self.links.lookup, emitter)
        self._open_monitor = open_monitor
        self._settle, self._max_settle = settle, max_settle
        self._done: deque[Done] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._monitor: LinkMonitor | None = None
        self._thread: threading.Thread | None = None
        self._dirty_since: float | None = None

    def start(self) -> None:
        # Subscribe before reading the kernel: a change in between is then seen twice, never missed.
        self._monitor = self._open_monitor(self._plane.pool.default)
        self.links.baseline(self._plane.pool.get().links())
        self.networks.baseline()
        self._plane.changes.listen(self._command_done)
        self._thread = threading.Thread(target=self._run, name="kvmworker-netwatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._plane.changes.unlisten(self._command_done)
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        while self._done:
            self._plane.changes.release(self._done.popleft())
        if self._monitor is not None:
            self._monitor.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def picture(self) -> dict[str, dict[str, Any]]:
        """Every recorded network and its health, read from the kernel now (one dump of the links)."""
        return network_picture(self._plane)

    def _command_done(self, done: Done) -> None:
        self._done.append(done)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the buffer is full (it is awake anyway) or the watch is stopped
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        assert self._monitor is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._monitor, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                try:
                    self._turn(selector)
                except Exception:  # keep watching: one bad turn must not end the events of the host
                    log.exception("the network watch failed to handle a change")
                    self._stopping.wait(0.1)  # and never spin on a failure that repeats

    def _turn(self, selector: selectors.BaseSelector) -> None:
        ready = selector.select(self._timeout())
        if ready:
            self._read()
        if self.networks.pending and self._dirty_since is None:
            self._dirty_since = time.monotonic()
        if self.networks.pending and (not ready or time.monotonic() - self._dirty_since >= self._max_settle):
            self._dirty_since = None
            self.networks.judge()

    def _timeout(self) -> float | None:
        if self._dirty_since is None:
            return None if not self.networks.pending else self._settle
        left = self._dirty_since + self._max_settle - time.monotonic()
        return max(0.0, min(self._settle, left))

    def _read(self) -> None:
        assert self._monitor is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        done = [self._done.popleft() for _ in range(len(self._done))]  # before the socket: their changes are in it
        try:
            changes = self._monitor.read()
        except Overrun:
            self._resync()
            changes = []
        try:
            for change in changes:
                self.networks.devices_changed(self.links.apply(change))
        finally:
            for notice in done:  # whatever happened above: later changes of its subjects are not its own
                self.networks.command_done(notice)
                self._plane.changes.release(notice)

    def _resync(self) -> None:
        log.warning("link notifications were lost (a burst overflowed the socket); reading every link again")
        assert self._monitor is not None
        self._monitor.discard()
        self.networks.devices_changed(self.links.reconcile(self._plane.pool.get().links()))
        self.networks.everything_changed()
        self._emitter.request_sync(SYNC_AFTER_OVERRUN)


def network_picture(plane: Netplane) -> dict[str, dict[str, Any]]:
    known = plane.store.all()
    if not known:
        return {}
    links = {link.name: link for link in plane.pool.get().links()}
    return {n.network_id: {"name": n.bridge} | health(n, links.get).data() for n in known}


def start_network_watch(plane: Netplane, events: Events) -> NetworkWatch | None:
    """Watch the worker's namespace for ``events``, provide the ``networks`` picture, and stop with the plane.
    A watch that cannot start (the ``--netns`` namespace is missing, say) is logged; commands work without it."""
    from kvmworker.events.pictures import NETWORKS

    watch = NetworkWatch(plane, events.emitter)
    try:
        watch.start()
    except Exception:
        log.exception("link and network events are off: the network watch could not start")
        watch.stop()
        return None
    plane.closing.append(watch.stop)
    events.pictures.provide(NETWORKS, watch.picture)
    return watch
