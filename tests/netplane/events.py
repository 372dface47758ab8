"""What the network-events tests share: the events a real ``Emitter`` stored, waited for by what they say."""

from __future__ import annotations

from kvmworker.events import Event
from tests.support.events import Match, Recorded, describe

__all__ = ["Match", "Recorded", "about", "describe"]


def about(source: str, subject: str | None = None, state: str | None = None, **fields: object) -> Match:
    def match(event: Event) -> bool:
        if event.source != source or (subject is not None and event.subject != subject):
            return False
        if state is not None and event.state != state:
            return False
        return all(getattr(event, name) == value for name, value in fields.items())

    return match
