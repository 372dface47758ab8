"""Replay: send a recorded envelope again under a fresh msg_id and compare the new reply with the recorded one.

A fresh msg_id is the point: the old one is already answered, so the worker would only send the
stored reply back. Entries whose data lost secrets to redaction are not replayable (the worker
would receive ``***`` as a password), nor are refused ones unless forced: replay signs what it
sends, so re-sending what the worker refused as unauthenticated would launder it.

Fields that change on every call (uptime, timestamps, durations: ``VOLATILE_FIELDS``) are left out
of the comparison, as is anything the operator names with ``--ignore``.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from kvmworker.journal.entry import Entry
from kvmworker.journal.redaction import contains_mask, redact
from kvmworker.journal.store import REFUSED
from kvmworker.journal.volatile import VOLATILE_FIELDS
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope, Reply

REFUSAL_CODES = frozenset({Code.UNAUTHENTICATED, Code.EXPIRED})
"""Refused by the guard: replay would sign what the worker would not run (laundering) unless forced."""


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


class Ignore:
    """Which differing paths do not count.

    A pattern without a dot names a key at any depth (``uptime``, ``*_at``); a dotted one is a path from
    the top of the reply (``data.run``, ``data.ports.name``, ``data.*.mtu``). ``*`` matches within one
    segment, list indices may be left out, and a pattern also covers everything below it.
    """

    def __init__(self, patterns: Iterable[str] = (), *, defaults: bool = True):
        self.patterns = tuple(dict.fromkeys([*(VOLATILE_FIELDS if defaults else ()), *patterns]))

    def __call__(self, path: str) -> bool:
        segments = _segments(path)
        return any(_matches(pattern, segments) for pattern in self.patterns)


def _segments(path: str) -> list[str]:
    return [s for s in _INDEX.sub("", path).split(".") if s]


def _matches(pattern: str, segments: list[str]) -> bool:
    wanted = _segments(pattern)
    if len(wanted) == 1:  # a key name, at any depth
        return any(fnmatch.fnmatchcase(segment, wanted[0]) for segment in segments)
    return len(segments) >= len(wanted) and all(
        fnmatch.fnmatchcase(s, w) for s, w in zip(segments, wanted, strict=False)
    )


_INDEX = re.compile(r"\[\d*\]")


@dataclass(frozen=True)
class ReplayResult:
    entry: Entry
    host: str
    msg_id: str
    new: dict[str, Any]
    differences: list[Difference]
    ignored: list[Difference] = field(default_factory=list)
    """What differed in fields that do not count (volatile or ``--ignore``)."""

    @property
    def same(self) -> bool:
        return not self.differences


def command_name(entry: Entry) -> str:
    """``Handler.command``; for a message refused before it was decoded, as its recorded body names it."""
    body = entry.envelope if isinstance(entry.envelope, dict) else {}
    handler, command = entry.handler or body.get("handler"), entry.command or body.get("command")
    return f"{handler}.{command}" if isinstance(handler, str) and isinstance(command, str) else "(undecodable)"


def refusal(entry: Entry) -> str | None:
    """Why the worker refused this entry (it never ran), or None."""
    if entry.state != REFUSED and entry.code not in REFUSAL_CODES:
        return None
    reply = entry.reply or {}
    detail = (reply.get("data") or {}).get("detail") if isinstance(reply.get("data"), dict) else None
    return f"refused by the worker with {entry.code} {reply.get('msg', '')}" + (f": {detail}" if detail else "")


def replay_envelope(entry: Entry, *, dry_run: bool) -> Envelope:
    """The recorded command under a fresh msg_id (``dry_run`` decides, not the recording)."""
    body = entry.envelope
    if not isinstance(body, dict) or "raw" in body:
        raise NotReplayable("what was received was not a JSON envelope")
    if "excerpt" in body:
        raise NotReplayable("only an excerpt of it was recorded")
    if contains_mask(body.get("data")):
        raise NotReplayable("its data held secrets that the journal masked")
    try:
        envelope = Envelope.model_validate(body)
    except ValidationError as exc:
        raise NotReplayable(f"the recorded envelope is not valid: {exc.errors()[0]['msg']}") from None
    return envelope.model_copy(update={"msg_id": uuid.uuid4(), "dry_run": dry_run, "token": None})


class Replayer:
    def __init__(self, caller: Caller, *, timeout: float, ignore: Ignore | None = None, force: bool = False):
        self._caller = caller
        self._timeout = timeout
        self._ignore = ignore or Ignore()
        self._force = force

    def replay(self, entry: Entry, *, host: str | None = None, dry_run: bool = False) -> ReplayResult:
        refused = refusal(entry)
        if refused and not self._force:
            raise NotReplayable(f"{refused}; replay does not sign and send what the worker refused (--force does)")
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
        found = differences(entry.reply, new)
        counted = [d for d in found if not self._ignore(d.path)]
        ignored = [d for d in found if self._ignore(d.path)]
        return ReplayResult(entry, target, str(envelope.msg_id), new, counted, ignored)


class Summary:
    """Per ``handler.command``: how many came back the same, how many differ and in which fields, how many skipped."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def add(self, entry: Entry, result: ReplayResult | None = None, skipped: str | None = None) -> None:
        group = self.groups.setdefault(command_name(entry), Group())
        if result is None:
            group.skipped += 1
            group.reasons[_reason_kind(skipped or "")] += 1
            return
        if result.same:
            group.same += 1
        else:
            group.different += 1
            group.fields.update({_INDEX.sub("[]", d.path) for d in result.differences})
        group.ignored.update({_INDEX.sub("[]", d.path) for d in result.ignored})

    @property
    def total(self) -> int:
        return sum(g.total for g in self.groups.values())

    def count(self, what: str) -> int:
        return sum(getattr(g, what) for g in self.groups.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.total,
            "same": self.count("same"),
            "different": self.count("different"),
            "skipped": self.count("skipped"),
            "commands": {name: group.to_dict() for name, group in sorted(self.groups.items())},
        }


@dataclass
class Group:
    same: int = 0
    different: int = 0
    skipped: int = 0
    fields: Counter = field(default_factory=Counter)
    """Path (indices as ``[]``) → how many replies differed there."""
    ignored: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.same + self.different + self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "different": self.different,
            "skipped": self.skipped,
            "fields": dict(self.fields.most_common()),
            "ignored": dict(self.ignored.most_common()),
            "skip_reasons": dict(self.reasons.most_common()),
        }


def _reason_kind(reason: str) -> str:
    """A skip reason without its particulars, so that equal reasons group."""
    return reason.split(":")[0].split(";")[0][:80]


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
