"""Which command caused a change: handlers say what they are changing, event sources ask when a change shows up.

Events arrive after the call that caused them returned (libvirt's event loop, a netlink socket): so a note
stays valid while the command runs and for ``window`` seconds after it ended. A change seen later, or on a
subject nobody noted, was made by someone else (``virsh``, the guest, a cable) and carries no ``msg_id``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DEFAULT_WINDOW_S = 5.0


@dataclass
class _Note:
    msg_id: str
    active: int  # commands on this subject still running under ``acting``
    until: float  # monotonic time after which the note says nothing


class Causes:
    """Thread-safe. Keys are subjects (VM name, network_id, device name) exactly as the events name them."""

    def __init__(self, window: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._notes: dict[str, _Note] = {}

    def note(self, subject: str, msg_id: str | None) -> None:
        """``msg_id`` changes ``subject`` now: events about it for ``window`` seconds carry ``msg_id``."""
        if not msg_id or not subject:
            return
        with self._lock:
            self._prune()
            old = self._notes.get(subject)
            active = old.active if old is not None and old.msg_id == msg_id else 0
            self._notes[subject] = _Note(msg_id, active, self._clock() + self.window)

    @contextmanager
    def acting(self, subject: str, msg_id: str | None) -> Iterator[None]:
        """``msg_id`` changes ``subject`` for as long as the block runs, and ``window`` seconds after."""
        if not msg_id or not subject:
            yield
            return
        self.note(subject, msg_id)
        with self._lock:
            self._notes[subject].active += 1
        try:
            yield
        finally:
            with self._lock:
                note = self._notes.get(subject)
                if note is not None and note.msg_id == msg_id:
                    note.active = max(0, note.active - 1)
                    note.until = self._clock() + self.window

    def cause(self, subject: str) -> str | None:
        """The msg_id of the command changing ``subject`` now or within the window, else ``None``."""
        with self._lock:
            note = self._notes.get(subject)
            if note is None:
                return None
            if note.active or self._clock() <= note.until:
                return note.msg_id
            del self._notes[subject]
            return None

    def _prune(self) -> None:
        if len(self._notes) < 1024:
            return
        now = self._clock()
        for subject in [s for s, n in self._notes.items() if not n.active and n.until < now]:
            del self._notes[subject]
