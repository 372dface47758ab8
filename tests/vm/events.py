"""Watching a worker's events from a test: every event in the order the emitter numbered them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvmworker.events import Event, Events

Match = Callable[[Event], bool]


class EventLog:
    """The events of ``events``' emitter as they are stored (the order the sender publishes them in)."""

    def __init__(self, events: Events):
        self._cond = threading.Condition()
        self.events: list[Event] = []
        events.emitter.add_listener(self._add)

    def _add(self, event: Event, dropped: int) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, match: Match, timeout: float = 30.0, after: int = 0) -> Event:
        """The first event from index ``after`` on that ``match``es, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((e for e in self.events[after:] if match(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event in {timeout} s; got {self.lifecycle()}")
                self._cond.wait(left)

    def lifecycle(self, subject: str | None = None) -> list[tuple[str, str | None, str | None]]:
        """(state, reason, msg_id) of the ``vm.lifecycle`` events, of ``subject`` when given."""
        with self._cond:
            return [
                (e.state, e.reason, e.msg_id)
                for e in self.events
                if (e.source, e.kind) == ("vm", "lifecycle") and subject in (None, e.subject)
            ]

    def worker_states(self) -> list[Event]:
        """The worker's own ``worker.state`` events (online, degraded, sync, offline)."""
        with self._cond:
            return [e for e in self.events if (e.source, e.kind) == ("worker", "state")]

    def of(self, subject: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.subject == subject]


def lifecycle_of(name: str, state: str, reason: str | None = None) -> Match:
    def match(event: Event) -> bool:
        return (event.source, event.kind, event.subject, event.state) == ("vm", "lifecycle", name, state) and (
            reason is None or event.reason == reason
        )

    return match


def worker_state(state: str) -> Match:
    def match(event: Event) -> bool:
        return (event.source, event.kind, event.state) == ("worker", "state", state)

    return match
