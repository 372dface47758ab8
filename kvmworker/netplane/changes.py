"""What commands are changing in the kernel right now: the causes of the network watch's events.

A command says which networks and devices it changes (``making``). Two things follow:
- a network is not judged while a command works on it, only once the command is over: a network being created
  or deleted passes through states (a bridge without its port, a port without its bridge) that are no drift,
  and a ``degraded`` for them would be a lie. At the end the watch is told (a ``Done`` notice);
- the events about those subjects carry the command's ``msg_id``, from the moment it starts until the watch has
  read every notification the kernel queued before the command ended (the kernel queues them before the call
  that caused them returns). That is exact where a time window would guess: a cable pulled a second after a
  ``create`` is nobody's command. (``kvmworker.events.Causes`` keeps a window because libvirt's events come late;
  netlink's do not.)
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("kvmworker.netplane")


@dataclass(frozen=True)
class Done:
    """A command finished changing these networks (ids) and devices (names)."""

    msg_id: str | None
    networks: frozenset[str]
    subjects: tuple[str, ...]


Listener = Callable[[Done], None]
"""Told from the command's thread when it ends; must not block. It owes a ``release(done)`` once it has read
what the command changed."""


class Changes:
    """Thread-safe. One per worker, shared by the network handlers (through ``Netplane``) and the watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()
        self._acting: dict[str, list[str]] = {}
        self._listeners: list[Listener] = []

    @contextmanager
    def making(
        self, msg_id: str | None, *, networks: Iterable[str] = (), devices: Iterable[str | None] = ()
    ) -> Iterator[None]:
        """The block changes ``networks`` (ids) and ``devices`` (names) on behalf of ``msg_id`` (None: the worker)."""
        ids = frozenset(networks)
        done = Done(msg_id or None, ids, tuple(dict.fromkeys([*ids, *filter(None, devices)])))
        with self._lock:
            self._busy.update(ids)
            for subject in done.subjects if done.msg_id else ():
                self._acting.setdefault(subject, []).append(done.msg_id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.subtract(ids)
                self._busy = +self._busy  # drop the zeros
                listeners = list(self._listeners)
            self._tell(listeners, done)

    def busy(self, network_id: str) -> bool:
        """A command is changing this network now: its state is in passing."""
        with self._lock:
            return self._busy[network_id] > 0

    def cause(self, subject: str) -> str | None:
        """The msg_id of the latest command changing ``subject`` whose changes are not all read yet."""
        with self._lock:
            acting = self._acting.get(subject)
            return acting[-1] if acting else None

    def release(self, done: Done) -> None:
        """Everything ``done``'s command changed has been read: later changes of its subjects are not its own."""
        if not done.msg_id:
            return
        with self._lock:
            for subject in done.subjects:
                acting = self._acting.get(subject, [])
                if done.msg_id in acting:
                    acting.remove(done.msg_id)
                if not acting:
                    self._acting.pop(subject, None)

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _tell(self, listeners: list[Listener], done: Done) -> None:
        if not listeners:
            self.release(done)  # nobody reads the kernel's notifications: nothing to attribute
            return
        for listener in listeners:
            try:
                listener(done)
            except Exception:  # the command's own outcome must not change because a watcher failed
                log.exception("a network watcher failed")
