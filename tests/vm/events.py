"""Watching a worker's events from a test: every event in the order the emitter numbered them."""

from __future__ import annotations

from kvmworker.events import Event, Events
from tests.support.events import Match, Recorded


class EventLog(Recorded):
    """The events of ``events``' emitter as they are stored (the order the sender publishes them in)."""

    def __init__(self, events: Events):
        super().__init__(events.emitter)

    def wait_for(self, match: Match, timeout: float = 30.0, after: int = 0) -> Event:
        return super().wait_for(match, timeout, after)

    def lifecycle(self, subject: str | None = None) -> list[tuple[str, str | None, str | None]]:
        """(state, reason, msg_id) of the ``vm.lifecycle`` events, of ``subject`` when given."""
        with self._changed:
            return [
                (e.state, e.reason, e.msg_id)
                for e in self.events
                if (e.source, e.kind) == ("vm", "lifecycle") and subject in (None, e.subject)
            ]

    def worker_states(self) -> list[Event]:
        """The worker's own ``worker.state`` events (online, degraded, sync, offline)."""
        with self._changed:
            return [e for e in self.events if (e.source, e.kind) == ("worker", "state")]

    def of(self, subject: str) -> list[Event]:
        with self._changed:
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
