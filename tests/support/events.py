"""Watching a worker's events from a test: every event a real ``Emitter`` stored, in order, waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvmworker.events import Emitter, Event

Match = Callable[[Event], bool]


class Recorded:
    """Every event ``emitter`` numbers and stores, in order (a listener: called on the source's thread)."""

    def __init__(self, emitter: Emitter):
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self.hold: threading.Event | None = None
        """When set to an unset Event, the next stored event blocks its source until it is set."""
        emitter.add_listener(self._add)

    def _add(self, event: Event, dropped: int) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.wait(30)

    def wait_for(self, match: Match, timeout: float = 10.0, after: int = 0) -> Event:
        """The first event (from position ``after``) that matches, waiting for it up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events[after:] if match(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(describe(e) for e in self.events[after:]) or "none"
                    raise AssertionError(f"no such event within {timeout} s; events seen:\n{seen}")
                self._changed.wait(left)

    def mark(self) -> int:
        with self._changed:
            return len(self.events)

    def since(self, mark: int, match: Match | None = None) -> list[Event]:
        with self._changed:
            return [e for e in self.events[mark:] if match is None or match(e)]

    def quiet(self, seconds: float = 0.3) -> None:
        """Wait until nothing new came for ``seconds`` (the watch judges networks 50 ms after the last change)."""
        while True:
            before = self.mark()
            time.sleep(seconds)
            if self.mark() == before:
                return


def describe(event: Event) -> str:
    extra = f" ({event.previous} →)" if event.previous else ""
    reason = f" reason={event.reason}" if event.reason else ""
    cause = f" msg_id={event.msg_id}" if event.msg_id else ""
    return f"#{event.seq} {event.source}.{event.kind} {event.subject} {event.state}{extra}{reason}{cause}"
