"""The work of ``kvmworker replay`` (the parser is in ``kvmworker.cli.replay``, light for ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from kvmworker.cli.common import EXIT_USAGE, CliError, settings_from, setup_logging
from kvmworker.cli.journal import find_entry, iso
from kvmworker.journal.entry import Entry
from kvmworker.journal.replay import (
    ABSENT,
    Caller,
    Ignore,
    NotReplayable,
    Replayer,
    ReplayResult,
    Summary,
    command_name,
    refusal,
)
from kvmworker.journal.store import JournalStore, journal_path
from kvmworker.protocol.wire import HEADER_SIGNATURE
from kvmworker.settings import Settings

MARKS = {"equal": " ", "replace": "!", "delete": "<", "insert": ">"}
EXIT_SAME, EXIT_DIFFERENT = 0, 1
MAX_PATHS = 8
"""Differing paths listed per reply without --verbose."""
MAX_LISTED = 20
"""Commands listed before the confirmation question."""
MAX_DATA_SHOWN = 300


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    if bool(args.msg_ids) == bool(args.file):
        raise CliError("replay: give either MSG_IDs or --file", EXIT_USAGE)
    try:
        entries = load_entries(args.file) if args.file else journal_entries(settings.state_dir, args.msg_ids)
    except (LookupError, OSError, ValueError) as exc:
        raise CliError(f"replay: {exc}", EXIT_USAGE) from None
    sendable = [e for e in entries if args.force or not refusal(e)]
    if (
        sendable
        and not args.dry_run
        and not args.yes
        and not confirm(sendable, args.target_host, sys.stdin, sys.stderr)
    ):
        print("nothing sent", file=sys.stderr)
        return EXIT_DIFFERENT
    progress = ProgressBar(len(entries), sys.stderr, enabled=bool(args.file) and sys.stderr.isatty())
    ignore = Ignore(args.ignore, defaults=args.default_ignore)
    # Only refused entries: each is reported as skipped before anything would be sent, so no connection.
    with open_caller(args, settings) if sendable else contextlib.nullcontext() as caller:
        replayer = Replayer(caller, timeout=settings.timeout, ignore=ignore, force=args.force)
        summary = replay_all(replayer, entries, args, progress, sys.stdout)
    return EXIT_SAME if summary.total and summary.count("same") == summary.total else EXIT_DIFFERENT


@contextlib.contextmanager
def open_caller(args: argparse.Namespace, settings: Settings) -> Iterator[Caller]:
    """What sends the commands: the bridge at ``--url``, else a client on the broker."""
    from kvmworker.cli.call import caller_for  # imported when needed: the broker stack is slow to import

    with caller_for(settings, "replay") as client:
        yield client


def replay_all(
    replayer: Replayer, entries: list[Entry], args: argparse.Namespace, progress: ProgressBar, out: TextIO
) -> Summary:
    summary = Summary()
    report = JsonReport(out) if args.json else TextReport(out, verbose=args.verbose, max_details=args.max_details)
    for done, entry in enumerate(entries, 1):
        try:
            result = replayer.replay(entry, host=args.target_host, dry_run=args.dry_run)
        except NotReplayable as exc:
            progress.clear()
            summary.add(entry, skipped=str(exc))
            report.skipped(entry, str(exc))
        else:
            progress.clear()
            summary.add(entry, result)
            report.result(result)
        progress.update(done)
    progress.finish()
    report.finish(summary, Ignore(args.ignore, defaults=args.default_ignore))
    return summary


class TextReport:
    """Details only for replies that differ (and skips), capped unless verbose; then the grouped summary."""

    def __init__(self, out: TextIO, *, verbose: bool, max_details: int):
        self._out = out
        self._verbose = verbose
        self._max = max_details
        self._shown = 0
        self._hidden = 0
        self._width = shutil.get_terminal_size((120, 24)).columns

    def result(self, result: ReplayResult) -> None:
        if result.same and not self._verbose:
            return
        if not self._room():
            return
        entry = result.entry
        verdict = "same reply" if result.same else f"{len(result.differences)} difference(s)"
        self._out.write(f"== {entry.msg_id} {command_name(entry)} → {result.host} as {result.msg_id}: {verdict}\n")
        if self._verbose:
            for line in side_by_side(entry.reply, result.new, self._width):
                self._out.write(line + "\n")
        paths = result.differences if self._verbose else result.differences[:MAX_PATHS]
        for diff in paths:
            self._out.write(f"   ! {diff.path}: {_value(diff.recorded)} → {_value(diff.new)}\n")
        if len(result.differences) > len(paths):
            self._out.write(f"   … and {len(result.differences) - len(paths)} more path(s)\n")

    def skipped(self, entry: Entry, reason: str) -> None:
        if self._room():
            self._out.write(f"{entry.msg_id} {command_name(entry)}: skipped, {reason}\n")

    def _room(self) -> bool:
        if self._verbose or self._shown < self._max:
            self._shown += 1
            return True
        self._hidden += 1
        return False

    def finish(self, summary: Summary, ignore: Ignore) -> None:
        out = self._out
        if self._hidden:
            out.write(f"… {self._hidden} more differing or skipped not shown (--verbose shows all, --json lists all)\n")
        counts = {k: summary.count(k) for k in ("same", "different", "skipped")}
        out.write(
            f"{summary.total} replayed: {counts['same']} same reply, {counts['different']} different, "
            f"{counts['skipped']} skipped\n"
        )
        for name, group in sorted(summary.groups.items()):
            parts = [f"{group.same} same"]
            if group.different:
                fields = ", ".join(f"{path} ×{n}" for path, n in group.fields.most_common(6))
                more = f", … {len(group.fields) - 6} more" if len(group.fields) > 6 else ""
                parts.append(f"{group.different} different ({fields}{more})")
            if group.skipped:
                reasons = "; ".join(f"{reason} ×{n}" for reason, n in group.reasons.most_common(3))
                parts.append(f"{group.skipped} skipped ({reasons})")
            out.write(f"  {name}: {', '.join(parts)}\n")
        ignored = sorted({path for g in summary.groups.values() for path in g.ignored})
        if ignored:
            out.write(f"not compared: {', '.join(ignored[:10])}{' …' if len(ignored) > 10 else ''}")
            out.write(" (volatile by default, or --ignore; --no-default-ignore compares them)\n")


class JsonReport:
    """``{"results": [one per message], "summary": {...}}`` on stdout, written at the end."""

    def __init__(self, out: TextIO):
        self._out = out
        self._results: list[dict[str, Any]] = []

    def result(self, result: ReplayResult) -> None:
        entry = result.entry
        self._results.append(
            {
                **_identity(entry),
                "host": result.host,
                "new_msg_id": result.msg_id,
                "outcome": "same" if result.same else "different",
                "differences": [_difference(d) for d in result.differences],
                "ignored": [d.path for d in result.ignored],
                "reply": result.new,
            }
        )

    def skipped(self, entry: Entry, reason: str) -> None:
        self._results.append({**_identity(entry), "outcome": "skipped", "reason": reason})

    def finish(self, summary: Summary, ignore: Ignore) -> None:
        document = {"results": self._results, "summary": {**summary.to_dict(), "not_compared": list(ignore.patterns)}}
        self._out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def _identity(entry: Entry) -> dict[str, Any]:
    return {"msg_id": entry.msg_id, "command": command_name(entry), "recorded_code": entry.code}


def _difference(diff: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"path": diff.path}
    if diff.recorded is not ABSENT:
        value["recorded"] = diff.recorded
    if diff.new is not ABSENT:
        value["new"] = diff.new
    return value


def journal_entries(state_dir: Path, msg_ids: list[str]) -> list[Entry]:
    store = JournalStore.open_existing(journal_path(state_dir))
    return [find_entry(store, msg_id) for msg_id in msg_ids]


def load_entries(path: Path) -> list[Entry]:
    with path.open(encoding="utf-8") as lines:
        return [Entry.from_dict(json.loads(line)) for line in lines if line.strip()]


def confirm(entries: list[Entry], host: str | None, answers: TextIO, out: TextIO) -> bool:
    """Shows the real commands and asks; without a terminal to ask on, the answer is no."""
    out.write(f"replay would execute {len(entries)} command(s) again, each under a fresh msg_id:\n")
    for entry in entries[:MAX_LISTED]:
        out.write(describe(entry, host))
    if len(entries) > MAX_LISTED:
        out.write(f"  … and {len(entries) - MAX_LISTED} more (kvmworker journal show MSG_ID for each)\n")
    if not answers.isatty():
        out.write("not a terminal to ask on: nothing sent; give --yes to execute (or --dry-run)\n")
        return False
    out.write(f"Execute these {len(entries)} command(s) again? [y/N] ")
    out.flush()
    return answers.readline().strip().lower() in ("y", "yes")


def describe(entry: Entry, host: str | None) -> str:
    """The command as the worker would run it, where it was recorded, and what is known of its sender."""
    envelope = entry.envelope if isinstance(entry.envelope, dict) else {}
    data = json.dumps(envelope.get("data"), ensure_ascii=False, sort_keys=True)
    if len(data) > MAX_DATA_SHOWN:
        data = data[:MAX_DATA_SHOWN] + f"… ({len(data)} characters)"
    lines = [
        f"  {entry.msg_id}  {command_name(entry)} → {host or entry.host}",
        f"      data: {data}",
        f"      recorded on {entry.host} at {iso(entry.received_at)} UTC: {entry.state}, code {entry.code}",
        f"      sender: {sender(entry)}",
    ]
    refused = refusal(entry)
    if refused:
        lines.append(f"      WARNING: {refused}; sent anyway because of --force, signed by this replay")
    return "\n".join(lines) + "\n"


def sender(entry: Entry) -> str:
    """Who sent it, as far as the journal knows: the bridge principal, a signature, the reply queue."""
    properties = entry.properties or {}
    headers = properties.get("headers") or {}
    known = []
    envelope = entry.envelope if isinstance(entry.envelope, dict) else {}
    principal = getattr(entry, "principal", None) or envelope.get("principal")  # set by the bridge, not the caller
    if principal:
        known.append(f"bridge user {principal}")
    known.append("signed" if headers.get(HEADER_SIGNATURE) else "unsigned (no signature header)")
    if properties.get("reply_to"):
        known.append(f"reply_to {properties['reply_to']}")
    return ", ".join(known)


def side_by_side(recorded: Any, new: Any, width: int) -> list[str]:
    """Both replies as indented JSON in two columns; the middle mark says how a line differs."""
    left, right = _json_lines(recorded), _json_lines(new)
    column = max(20, (width - 3) // 2)
    lines = [f"{'recorded':<{column}}   new"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, left, right, autojunk=False).get_opcodes():
        mark = MARKS[tag]
        olds, news = left[i1:i2], right[j1:j2]
        for k in range(max(len(olds), len(news))):
            old = olds[k] if k < len(olds) else ""
            new_line = news[k] if k < len(news) else ""
            lines.append(f"{_fit(old, column):<{column}} {mark} {_fit(new_line, column)}".rstrip())
    return lines


def _value(value: Any) -> str:
    return repr(value) if value is ABSENT else json.dumps(value, ensure_ascii=False)


def _json_lines(value: Any) -> list[str]:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True).splitlines()


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class ProgressBar:
    """``[#####.....] 5/10`` redrawn in place on a terminal; silent elsewhere (logs are not animations)."""

    def __init__(self, total: int, out: TextIO, *, enabled: bool, width: int = 30):
        self._total = max(total, 1)
        self._out = out
        self._enabled = enabled
        self._width = width

    def update(self, done: int) -> None:
        if self._enabled:
            filled = self._width * done // self._total
            self._out.write(f"\r[{'#' * filled}{'.' * (self._width - filled)}] {done}/{self._total}")
            self._out.flush()

    def clear(self) -> None:
        if self._enabled:
            self._out.write("\r\033[K")

    def finish(self) -> None:
        if self._enabled:
            self._out.write("\n")
