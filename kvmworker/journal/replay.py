"""Replay: send a recorded envelope again under a fresh msg_id and compare the new reply with the recorded one.

A fresh msg_id is the point: the old one is already answered, so the worker would only send the
stored reply back. Entries whose data lost secrets to redaction are not replayable (the worker
would receive ``***`` as a password).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from kvmworker.journal.entry import Entry
from kvmworker.journal.redaction import contains_mask, redact
from kvmworker.protocol.envelope import Envelope, Reply


class NotReplayable(Exception):
    """This entry cannot be sent again as it was recorded."""


class Caller(Protocol):
    def call(
        self,
        host: str,
        handler: str,
        command: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float = ...,
        dry_run: bool = ...,
        msg_id: str | None = ...,
    ) -> Reply: ...


@dataclass(frozen=True)
class Difference:
    path: str
    recorded: Any
    new: Any


@dataclass(frozen=True)
class ReplayResult:
    entry: Entry
    host: str
    msg_id: str
    new: dict[str, Any]
    differences: list[Difference]

    @property
    def same(self) -> bool:
        return not self.differences


def replay_envelope(entry: Entry, *, dry_run: bool) -> Envelope:
    """The recorded command under a fresh msg_id (``dry_run`` decides, not the recording)."""
    body = entry.envelope
    if not isinstance(body, dict) or "raw" in body:
        raise NotReplayable("what was received was not a JSON envelope")
    if contains_mask(body.get("data")):
        raise NotReplayable("its data held secrets that the journal masked")
    try:
        envelope = Envelope.model_validate(body)
    except ValidationError as exc:
        raise NotReplayable(f"the recorded envelope is not valid: {exc.errors()[0]['msg']}") from None
    return envelope.model_copy(update={"msg_id": uuid.uuid4(), "dry_run": dry_run, "token": None})


class Replayer:
    def __init__(self, caller: Caller, *, timeout: float):
        self._caller = caller
        self._timeout = timeout

    def replay(self, entry: Entry, *, host: str | None = None, dry_run: bool = False) -> ReplayResult:
        envelope = replay_envelope(entry, dry_run=dry_run)
        target = host or entry.host
        if not target:
            raise NotReplayable("no host recorded; give --host")
        reply = self._caller.call(
            target,
            envelope.handler,
            envelope.command,
            envelope.data,
            timeout=self._timeout,
            dry_run=dry_run,
            msg_id=str(envelope.msg_id),
        )
        # Compared as recorded: a token in the new reply is masked the way the recorded one was.
        new = redact(reply.model_dump(mode="json"))
        return ReplayResult(entry, target, str(envelope.msg_id), new, differences(entry.reply, new))


def differences(recorded: Any, new: Any, path: str = "") -> list[Difference]:
    """Every leaf that differs, by its dotted path (``data.ports[1].name``)."""
    if isinstance(recorded, dict) and isinstance(new, dict):
        found: list[Difference] = []
        for key in sorted(set(recorded) | set(new), key=str):
            found += differences(recorded.get(key, ABSENT), new.get(key, ABSENT), _join(path, str(key)))
        return found
    if isinstance(recorded, list) and isinstance(new, list) and len(recorded) == len(new):
        return [
            d for i, (a, b) in enumerate(zip(recorded, new, strict=True)) for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if recorded == new else [Difference(path or "(reply)", recorded, new)]


class _Absent:
    """A key one side does not have (``None`` would be a value that is there)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
