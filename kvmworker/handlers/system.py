"""SystemHandler (extension): is the worker there, and what can it do."""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from kvmworker import __version__
from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.types import Uuid
from kvmworker.protocol.urls import mask_secrets

FeatureProbe = Callable[[], Any]
ResultLookup = Callable[[str], Reply]
LAST_ERRORS = 5
ERROR_SCAN = 500  # the newest entries searched for errors


class ResultQuery(BaseModel):
    msg_id: Uuid


class SystemHandler:
    name = "SystemHandler"

    def __init__(
        self,
        host: str,
        catalogue: Callable[[], Mapping[str, list[str]]],
        features: Mapping[str, FeatureProbe] | None = None,
        clock: Callable[[], float] = time.monotonic,
        results: ResultLookup | None = None,
        journal: Any = None,
    ):
        self._host = host
        self._results = results
        self._journal = journal  # a JournalStore, when the worker keeps one
        self._catalogue = catalogue
        self._features = dict(features or {})
        self._clock = clock
        self._started = clock()
        # set by kvmworker.events.wiring: the event sequence, buffer and last events, for ``status``
        self.events_summary: Callable[[], dict[str, Any]] | None = None

    @command(mutates=False, inline=True)
    def ping(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "hostname": socket.gethostname(),
            "version": __version__,
            "uptime": round(self._clock() - self._started, 3),
        }

    @command(mutates=False)
    def capabilities(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "version": __version__,
            "kernel": platform.release(),
            "handlers": dict(self._catalogue()),
            "features": {name: _probe(fn) for name, fn in sorted(self._features.items())},
        }

    @command(mutates=False)
    def status(self, data: Any, ctx: Context) -> dict[str, Any]:
        """What the operator on call asks first (``kvmworker status``): libvirt, commands running, last errors."""
        return {
            **self.ping(data, ctx),
            "libvirt": _probe(self._features["libvirt"]) if "libvirt" in self._features else None,
            **(journal_summary(self._journal) if self._journal is not None else {"commands": None, "last_errors": []}),
            "events": self.events_summary() if self.events_summary is not None else None,
        }

    @command(ResultQuery, mutates=False, inline=True)
    def result(self, data: ResultQuery, ctx: Context) -> Reply:
        """The reply of an earlier command as it was sent, or -1 with ``state`` running/interrupted/never_seen."""
        msg_id = str(data.msg_id)
        if self._results is None:
            return Reply.error(Code.UNKNOWN_OUTCOME, "this worker keeps no journal", state="no_journal", msg_id=msg_id)
        return self._results(msg_id)

    def feature_probe(self, name: str) -> FeatureProbe | None:
        """A registered feature probe (the metrics ask ``libvirt`` at each scrape)."""
        return self._features.get(name)


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
