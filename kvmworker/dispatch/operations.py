"""The commands this worker has taken and not answered yet, and the last ones it answered (INTERFACE §8).

The pipeline feeds it: ``add`` when a command is handed to the pool (``queued``), ``start`` when a pool thread
takes it (``running``), ``answered`` once its reply is final (then it is one of the last ``RECENT``). What the
command itself says and asks goes through its ``Operation`` (``Context.progress``, ``Context.cancelled``).
``SystemHandler`` reads it (``operations``, ``result``) and acts on it (``cancel``).

Whether a queued command starts or is dropped is decided once, under the lock: by the pool thread that takes it
(``start``) or by ``cancel``, whichever comes first; the other does nothing. So a dropped command is answered
exactly once (30013, by the canceller, through the ``drop`` the pipeline gave) and its task, when a pool thread
reaches it, finds it already answered.

Commands that run on the consumer thread (``inline``: ping, result, operations, cancel) are not operations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from kvmworker.protocol.errors import InvalidParameter, OperationNotAllowed

log = logging.getLogger("kvmworker.operations")

QUEUED, RUNNING, ANSWERED = "queued", "running", "answered"
DROPPING = "dropping"
"""Cancelled while queued, its 30013 being sent: it never starts."""
RECENT = 100
"""How many answered operations ``operations {state: recent}`` keeps."""

Drop = Callable[[str], None]
"""``drop(detail)`` answers a queued command 30013 and settles its message (the pipeline's)."""


class OperationObserver(Protocol):
    """Told about progress and ends (``kvmworker.events.operations`` turns them into events). Must not block."""

    def progressed(self, op: Operation) -> None: ...

    def ended(self, op: Operation) -> None: ...


class Operation:
    """One command between its queueing and its reply. Its fields change under the registry's lock only."""

    __slots__ = ("_drop", "_lock", "_registry", "_wakers", "answered_at", "cancellable", "cancelling", "code",
                 "command", "handler", "msg_id", "phase", "progress", "queued_at", "resource", "started_at",
                 "state")  # fmt: skip

    def __init__(
        self,
        registry: Operations,
        msg_id: str,
        handler: str,
        command: str,
        resource: str | None,
        cancellable: bool,
        drop: Drop | None,
    ):
        self._registry = registry
        self._lock = registry.lock
        self._drop = drop
        self._wakers: list[Callable[[], None]] = []
        self.msg_id = msg_id
        self.handler = handler
        self.command = command
        self.resource = resource
        self.cancellable = cancellable
        self.state = QUEUED
        self.queued_at = registry.clock()
        self.started_at: float | None = None
        self.answered_at: float | None = None
        self.progress: float | None = None
        self.phase: str | None = None
        self.cancelling = False
        """Cancel was asked while it ran; it answers 30013 itself once it has stopped safely."""
        self.code: int | None = None

    # -- what the running command says and asks (through its Context) ---------

    def report(self, percent: float | None, phase: str | None = None) -> None:
        """Progress (0–100, clamped; None: unknown) and the phase it is in; observers hear of each change of
        the whole percent or of the phase (so at most ~100 per phase), the registry keeps the latest."""
        value = None if percent is None else round(min(100.0, max(0.0, float(percent))), 1)
        with self._lock:
            changed = phase != self.phase or _whole(value) != _whole(self.progress)
            self.progress, self.phase = value, phase
        if changed:
            self._registry.notify("progressed", self)

    @property
    def cancelled(self) -> bool:
        return self.cancelling

    @contextmanager
    def on_cancel(self, wake: Callable[[], None]) -> Iterator[None]:
        """``wake`` is called (from the canceller's thread) if a cancel comes while inside: to end a wait early."""
        with self._lock:
            self._wakers.append(wake)
            now = self.cancelling
        if now:
            wake()
        try:
            yield
        finally:
            with self._lock:
                self._wakers.remove(wake)

    def view(self) -> dict[str, Any]:
        """What ``operations`` and ``result`` show of it."""
        with self._lock:
            view = {
                "msg_id": self.msg_id,
                "handler": self.handler,
                "command": self.command,
                "resource": self.resource,
                "state": self.state,
                "queued_at": self.queued_at,
                "started_at": self.started_at,
                "progress": self.progress,
                "phase": self.phase,
                "cancellable": self.cancellable,
                "cancelling": self.cancelling,
            }
            if self.state == ANSWERED:
                view["code"] = self.code
                view["answered_at"] = self.answered_at
            return view

    @property
    def ran_for(self) -> float | None:
        """Seconds from its start to its answer (None: it never started)."""
        if self.started_at is None or self.answered_at is None:
            return None
        return self.answered_at - self.started_at


class Operations:
    def __init__(self, recent: int = RECENT, clock: Callable[[], float] = time.time):
        self.lock = threading.Lock()
        self.clock = clock
        self._live: list[Operation] = []
        self._recent: deque[Operation] = deque(maxlen=recent)
        self._observers: list[OperationObserver] = []

    def observe(self, observer: OperationObserver) -> None:
        self._observers.append(observer)

    # -- fed by the pipeline ---------------------------------------------------

    def add(
        self,
        msg_id: str,
        handler: str,
        command: str,
        resource: str | None,
        cancellable: bool,
        drop: Drop | None = None,
    ) -> Operation:
        """A command handed to the pool (before it is: a pool thread may take it at once). ``drop``: how
        to answer it 30013 if it is cancelled before it starts (None: it cannot be, it starts right away)."""
        op = Operation(self, msg_id, handler, command, resource, cancellable, drop)
        with self.lock:
            self._live.append(op)
        return op

    def start(self, op: Operation) -> bool:
        """A pool thread takes it: True, it runs now; False, it was dropped (and answered) meanwhile."""
        with self.lock:
            if op.state != QUEUED:
                return False
            op.state, op.started_at, op._drop = RUNNING, self.clock(), None
            return True

    def answered(self, op: Operation, code: int) -> None:
        with self.lock:
            op.state, op.code, op.answered_at = ANSWERED, code, self.clock()
            op._drop = None
            self._forget(op)
            self._recent.append(op)
        self.notify("ended", op)

    def withdrawn(self, op: Operation) -> None:
        """It goes back to the broker's queue unanswered (the worker is stopping): no longer this worker's."""
        with self.lock:
            self._forget(op)

    # -- read and acted on by SystemHandler -----------------------------------

    def find(self, msg_id: str) -> dict[str, Any] | None:
        """The live operation of ``msg_id`` (a running one before a queued duplicate), or None."""
        with self.lock:
            ops = [op for op in self._live if op.msg_id == msg_id]
        ops.sort(key=lambda op: op.state != RUNNING)
        return ops[0].view() if ops else None

    def now(self) -> list[dict[str, Any]]:
        """Queued and running, oldest first."""
        with self.lock:
            ops = list(self._live)
        return [op.view() for op in ops]

    def recent(self) -> list[dict[str, Any]]:
        """The last answered, newest first."""
        with self.lock:
            ops = list(self._recent)
        return [op.view() for op in reversed(ops)]

    def plan_cancel(self, msg_id: str) -> list[str]:
        """What ``cancel`` would do, changing nothing; its errors are ``cancel``'s."""
        return [_step(op, state) for op, state in self._judge(msg_id)]

    def cancel(self, msg_id: str, by: str | None = None) -> dict[str, Any]:
        """Queued: dropped now (answered 30013 here). Running and cancellable: told to stop (it answers 30013
        once it has). Running, not cancellable: 30004. Not queued or running here: 30006. ``by``: the msg_id
        of the cancel, named in the dropped command's reply."""
        dropped: list[Operation] = []
        woken: list[Callable[[], None]] = []
        with self.lock:
            judged = self._judge_locked(msg_id)
            for op, verdict in judged:
                if verdict == "drop":
                    op.state = DROPPING  # from now on ``start`` refuses it; ``answered`` (via drop) completes it
                    dropped.append(op)
                else:
                    op.cancelling = True
                    woken.extend(op._wakers)
        for op in dropped:
            log.info("[%s] %s.%s cancelled while queued: dropped before it started", op.msg_id, op.handler, op.command)
            assert op._drop is not None
            op._drop(f"cancelled{f' by {by}' if by else ''} while queued: it never started, nothing was done")
        for wake in woken:
            _quietly(wake)
        states = {verdict for _, verdict in judged}
        first = judged[0][0]
        return {
            "msg_id": msg_id,
            "handler": first.handler,
            "command": first.command,
            "state": "cancelling" if "signal" in states else "dropped",
        }

    # -- inside ---------------------------------------------------------------

    def notify(self, what: str, op: Operation) -> None:
        for observer in self._observers:
            try:
                getattr(observer, what)(op)
            except Exception:  # an observer never fails the command it observes
                log.exception("operation observer %s.%s failed", type(observer).__name__, what)

    def _judge(self, msg_id: str) -> list[tuple[Operation, str]]:
        with self.lock:
            return self._judge_locked(msg_id)

    def _judge_locked(self, msg_id: str) -> list[tuple[Operation, str]]:
        """Each live operation of ``msg_id`` with what cancel does to it (drop or signal), or the refusal."""
        ops = [op for op in self._live if op.msg_id == msg_id and op.state != DROPPING]
        if not ops:
            answered = next((op for op in reversed(self._recent) if op.msg_id == msg_id), None)
            if answered is not None:
                why = f"it was answered already (code {answered.code})"
            elif any(op.msg_id == msg_id for op in self._live):
                why = "it was cancelled already"
            else:
                why = "this worker does not know it"
            raise InvalidParameter(f"no command with msg_id {msg_id} is queued or running here: {why}", field="msg_id")
        judged = []
        for op in ops:
            if op.state == QUEUED and op._drop is not None:
                judged.append((op, "drop"))
            elif op.cancellable:
                judged.append((op, "signal"))
        if not judged:
            op = ops[0]
            raise OperationNotAllowed(
                f"{op.handler}.{op.command} ({msg_id}) is running and cannot be cancelled; it runs to its end",
                field="msg_id",
            )
        return judged

    def _forget(self, op: Operation) -> None:
        if op in self._live:
            self._live.remove(op)


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def _step(op: Operation, verdict: str) -> str:
    if verdict == "drop":
        return f"drop {op.handler}.{op.command} ({op.msg_id}, queued) before it starts; it is answered 30013"
    return f"tell {op.handler}.{op.command} ({op.msg_id}, running) to stop; it answers 30013 once it has"


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("waking a cancelled command failed")
