"""``Events``: the three things the rest of the worker shares about events, made once per worker.

Handlers that act for a command get ``causes``; event sources get ``emitter`` (and ``causes`` to ask);
sources that know a part of the whole picture register a provider on ``pictures`` (``vms``, ``networks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kvmworker.events.buffer import DEFAULT_CAPACITY, EventBuffer
from kvmworker.events.causes import Causes
from kvmworker.events.emitter import Emitter
from kvmworker.events.pictures import Pictures


@dataclass
class Events:
    emitter: Emitter
    causes: Causes = field(default_factory=Causes)
    pictures: Pictures = field(default_factory=Pictures)

    @classmethod
    def create(cls, host: str, state_dir: Path | None, capacity: int = DEFAULT_CAPACITY) -> Events:
        """``state_dir`` None keeps the sequence in memory (tools, tests): it restarts at 1."""
        return cls(Emitter(host, EventBuffer.in_state_dir(state_dir, capacity)))


class EventUser(Protocol):
    """A part that publishes events or acts for commands (``VmHandler``): the worker gives it the hub before
    ``online`` is said, so that its picture provider is in it. The composition root names each one."""

    def use_events(self, events: Events) -> None: ...
