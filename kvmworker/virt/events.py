"""Domain lifecycle events, delivered by libvirt's event loop to whoever waits for one domain."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import libvirt

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
        for waiter in matching:
            waiter.seen.append((event, detail))
            if event in waiter.kinds:
                waiter.event.set()

    def interrupt_all(self) -> None:
        """The connection broke: no event will come, so wake every waiter to look again (and fail fast)."""
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.event.set()
