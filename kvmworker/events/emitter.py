"""``Emitter``: what every event source gets, and nothing else.

``emit`` numbers the event, writes it to the on-disk buffer and wakes the sender; it never waits for the
broker and never raises into the source (a libvirt callback, a netlink thread, a handler). The worker's
own state (``online``/``offline``/``degraded``/``sync``) is driven through the same object:
``request_sync`` asks for a ``sync`` event now (after a libvirt reconnection: events may have been
missed), ``degraded``/``recovered`` report that a component (``libvirt``) was lost or regained.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kvmworker.events.buffer import EventBuffer
from kvmworker.events.model import Event

log = logging.getLogger("kvmworker.events")

SyncTrigger = Callable[[str], None]
"""``request_sync(reason)``: publish a ``worker.state sync`` with the whole picture soon."""


class StateHooks(Protocol):
    """What the worker's state emitter (``kvmworker.events.state.WorkerState``) does for the sources."""

    def request_sync(self, reason: str) -> None: ...

    def degraded(self, component: str, reason: str) -> None: ...

    def recovered(self, component: str) -> None: ...


class Emitter:
    """Thread-safe. One per worker; sources share it."""

    def __init__(self, host: str, buffer: EventBuffer, clock: Callable[[], float] = time.time):
        self.host = host
        self.buffer = buffer
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event, int], None]] = []
        self._state: StateHooks | None = None

    def emit(
        self,
        source: str,
        kind: str,
        subject: str,
        state: str,
        *,
        previous: str | None = None,
        reason: str | None = None,
        msg_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event | None:
        """Number, store and hand over one event; the event, or ``None`` if it could not be stored (logged)."""
        try:
            with self._lock:  # seq order == buffer order == publish order
                now = self._clock()
                made: list[Event] = []

                def body(seq: int) -> bytes:
                    event = Event(
                        host=self.host,
                        seq=seq,
                        time=now,
                        source=source,
                        kind=kind,
                        subject=subject,
                        state=state,
                        previous=previous,
                        reason=reason,
                        msg_id=msg_id,
                        data=data or {},
                    )
                    made.append(event)
                    return event.to_body()

                _, dropped = self.buffer.append(body)
            event = made[0]
        except Exception:
            log.exception("event %s.%s %s %s not stored", source, kind, subject, state)
            return None
        for listener in list(self._listeners):
            try:
                listener(event, dropped)
            except Exception:
                log.exception("event listener failed")
        return event

    def add_listener(self, listener: Callable[[Event, int], None]) -> None:
        """``listener(event, dropped)`` after each stored event (the sender's wake-up, metrics); must not block."""
        self._listeners.append(listener)

    # -- the worker's state, for the sources ------------------------------------------------------------------

    def bind_state(self, hooks: StateHooks) -> None:
        self._state = hooks

    def request_sync(self, reason: str = "requested") -> None:
        """A ``worker.state sync`` (the whole picture) soon: call it when events may have been missed."""
        if self._state is not None:
            self._state.request_sync(reason)

    def degraded(self, component: str, reason: str) -> None:
        """``component`` (e.g. ``libvirt``) is lost: a ``worker.state degraded`` event."""
        if self._state is not None:
            self._state.degraded(component, reason)

    def recovered(self, component: str) -> None:
        """``component`` is back: ``worker.state online`` again when nothing else is degraded."""
        if self._state is not None:
            self._state.recovered(component)
