"""Domain lifecycle events, delivered by libvirt's event loop to whoever waits for one domain, and to listeners.

libvirt's Python binding accepts one lifecycle callback per connection (a second is refused: "event callback
already tracked"), so this one callback serves both the waiters of commands and the event source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import libvirt

log = logging.getLogger("kvmworker.virt")

Listener = Callable[[libvirt.virDomain, int, int], None]
"""``listener(dom, event, detail)`` for every lifecycle event, on libvirt's event loop thread: must not block."""

STOPPED = frozenset({libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED})


@dataclass
class Waiter:
    uuid: str
    kinds: frozenset[int]
    event: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[int, int]] = field(default_factory=list)

    def wait(self, timeout: float) -> bool:
        """True when a matching event arrived (or the connection broke, or ``wake`` was called) in time."""
        return self.event.wait(timeout)

    def wake(self) -> None:
        """End the wait now, whatever the domain does (a cancelled command stops waiting)."""
        self.event.set()


class LifecycleEvents:
    """Waiters keyed by domain UUID; ``on_event`` is the libvirt callback, run on the event loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[Waiter] = []
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """``listener`` hears every lifecycle event of every domain, on every connection, from now on."""
        with self._lock:
            self._listeners.append(listener)

    @contextmanager
    def watch(self, uuid: str, kinds: frozenset[int] = STOPPED) -> Iterator[Waiter]:
        """Register before acting on the domain, so that an event arriving early is not lost."""
        waiter = Waiter(uuid, kinds)
        with self._lock:
            self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def on_event(self, conn: object, dom: libvirt.virDomain, event: int, detail: int, opaque: object) -> None:
        uuid = dom.UUIDString()
        with self._lock:
            matching = [w for w in self._waiters if w.uuid == uuid]
            listeners = list(self._listeners)
        for waiter in matching:
            waiter.seen.append((event, detail))
            if event in waiter.kinds:
                waiter.event.set()
        for listener in listeners:
            try:
                listener(dom, event, detail)
            except Exception:  # libvirt would only print it; one listener's failure must not starve the others
                log.exception("lifecycle listener failed on event %d/%d", event, detail)

    def interrupt_all(self) -> None:
        """The connection broke: no event will come, so wake every waiter to look again (and fail fast)."""
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.event.set()
