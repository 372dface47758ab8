"""SystemHandler (extension): is the worker there, and what can it do."""

from __future__ import annotations

import math
import platform
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvmworker import __version__
from kvmworker.api.operations import CancelQuery, OperationsQuery
from kvmworker.api.system import ResultQuery, SystemApi
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.dispatch.operations import QUEUED, Operations
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.urls import mask_secrets

FeatureProbe = Callable[[], Any]
ResultLookup = Callable[[str], Reply]
LAST_ERRORS = 5
ERROR_SCAN = 500  # the newest entries searched for errors
HOSTNAME_TTL_S = 1.0


class SystemHandler(SystemApi):
    def __init__(
        self,
        host: str,
        catalogue: Callable[[], Mapping[str, list[str]]],
        features: Mapping[str, FeatureProbe] | None = None,
        clock: Callable[[], float] = time.monotonic,
        results: ResultLookup | None = None,
        journal: Any = None,
        operations: Operations | None = None,
    ):
        self._host = host
        self._results = results
        # the pipeline's (kvmworker.app gives both the same); a SystemHandler outside a worker has its own, empty
        self._operations = operations or Operations()
        self._journal = journal  # a JournalStore, when the worker keeps one
        self._catalogue = catalogue
        self._features = dict(features or {})
        self._clock = clock
        self._started = clock()
        self._hostname = _Hostname()
        # set by kvmworker.events.wiring: the event sequence, buffer and last events, for ``status``
        self.events_summary: Callable[[], dict[str, Any]] | None = None

    def ping(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "hostname": self._hostname(),
            "version": __version__,
            "uptime": round(self._clock() - self._started, 3),
        }

    def capabilities(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "version": __version__,
            "kernel": platform.release(),
            "handlers": dict(self._catalogue()),
            "features": {name: _probe(fn) for name, fn in sorted(self._features.items())},
        }

    def status(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            **self.ping(data, ctx),
            "libvirt": _probe(self._features["libvirt"]) if "libvirt" in self._features else None,
            **(journal_summary(self._journal) if self._journal is not None else {"commands": None, "last_errors": []}),
            "events": self.events_summary() if self.events_summary is not None else None,
        }

    def result(self, data: ResultQuery, ctx: Context) -> Reply:
        """The reply of an earlier command as it was sent, or -1 with ``state`` queued/running (with its
        ``started_at``, ``progress`` and ``phase``), interrupted or never_seen."""
        msg_id = str(data.msg_id)
        live = self._operations.find(msg_id)
        if live is not None:
            return _not_yet(live)
        if self._results is None:
            return Reply.error(Code.UNKNOWN_OUTCOME, "this worker keeps no journal", state="no_journal", msg_id=msg_id)
        return self._results(msg_id)

    def operations(self, data: OperationsQuery, ctx: Context) -> dict[str, Any]:
        ops = self._operations.now() if data.state == "running" else self._operations.recent()
        return {"state": data.state, "operations": ops, "count": len(ops)}

    def cancel(self, data: CancelQuery, ctx: Context) -> dict[str, Any]:
        return self._operations.cancel(str(data.msg_id), by=ctx.msg_id)

    def plan_cancel(self, data: CancelQuery, ctx: Context) -> Plan:
        return Plan(self._operations.plan_cancel(str(data.msg_id)))


class _Hostname:
    """``socket.gethostname()`` read again at most once a second. Not for the syscall itself: CPython lets go of the
    GIL around it, and on a busy worker (the journal's writer thread waiting for the GIL) every ping then paid for
    two thread switches. A renamed host shows its new name within a second."""

    __slots__ = ("_name", "_until")

    def __init__(self) -> None:
        self._name = ""
        self._until = -math.inf

    def __call__(self) -> str:
        now = time.monotonic()
        if now >= self._until:
            self._name, self._until = socket.gethostname(), now + HOSTNAME_TTL_S
        return self._name


def _not_yet(op: dict[str, Any]) -> Reply:
    """-1 (no reply yet) saying where the command is: queued behind others, or running and how far."""
    if op["state"] == QUEUED:
        detail = "the command waits for its turn (queued); ask again later"
    elif op["cancelling"]:
        detail = "the command is still running; it was asked to cancel and answers 30013 once it has stopped"
    else:
        detail = "the command is still running; ask again later"
    fields = ("handler", "command", "resource", "queued_at", "started_at", "progress", "phase", "cancellable")
    return Reply.error(
        Code.UNKNOWN_OUTCOME,
        detail,
        state=op["state"],
        msg_id=op["msg_id"],
        **{name: op[name] for name in fields},
    )


def journal_summary(store: Any, last: int = LAST_ERRORS) -> dict[str, Any]:
    """Commands running now and the newest answers with a code other than 0, from a JournalStore."""
    from kvmworker.journal.query import Query

    running = sum(1 for _ in store.query(Query(state="running")))
    errors = []
    for entry in store.query(Query(limit=ERROR_SCAN)):
        if entry.code not in (None, 0):
            errors.append(
                {
                    "msg_id": entry.msg_id,
                    "received_at": entry.received_at,
                    "handler": entry.handler,
                    "command": entry.command,
                    "code": entry.code,
                    "msg": (entry.reply or {}).get("msg"),
                    "detail": ((entry.reply or {}).get("data") or {}).get("detail"),
                }
            )
            if len(errors) == last:
                break
    return {"commands": {"running": running, "journal_entries": store.count()}, "last_errors": errors}


def _probe(fn: FeatureProbe) -> Any:
    """A feature that cannot be determined is reported with the reason, not as an error of the command."""
    try:
        return fn()
    except Exception as exc:
        return {"available": False, "reason": mask_secrets(f"{type(exc).__name__}: {exc}")}
