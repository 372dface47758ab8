"""``kvmworker replay MSG_ID… | --file export.jsonl``: send recorded commands again and compare the replies.

Each command goes out under a fresh msg_id. Nothing is executed before the operator says yes
(``--yes`` for scripts); ``--dry-run`` asks every handler for its plan instead and needs no consent.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from kvmworker.cli.common import add_settings_flags, settings_from, setup_logging
from kvmworker.cli.journal import find_entry
from kvmworker.journal.entry import Entry
from kvmworker.journal.replay import ABSENT, NotReplayable, Replayer, ReplayResult
from kvmworker.journal.store import JournalStore, journal_path

MARKS = {"equal": " ", "replace": "!", "delete": "<", "insert": ">"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("replay", help="send recorded commands again under fresh msg_ids")
    parser.add_argument("msg_ids", nargs="*", metavar="MSG_ID", help="from this host's journal (prefixes will do)")
    parser.add_argument("--file", type=Path, help="a `kvmworker journal export` file (JSON Lines)")
    parser.add_argument("--host", dest="target_host", help="send to this host (default: the host that recorded it)")
    parser.add_argument("--dry-run", action="store_true", help="show each handler's plan; change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask before executing")
    add_settings_flags(
        parser, "state-dir", "broker", "url", "token", "token-file", "timeout", "keys-file", "trusted-keys-file"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    if bool(args.msg_ids) == bool(args.file):
        print("give either MSG_IDs or --file", file=sys.stderr)
        return 2
    try:
        entries = load_entries(args.file) if args.file else journal_entries(settings.state_dir, args.msg_ids)
    except (LookupError, OSError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.dry_run and not args.yes and not confirm(entries, args.target_host, sys.stdin, sys.stderr):
        print("nothing sent", file=sys.stderr)
        return 1
    progress = ProgressBar(len(entries), sys.stderr, enabled=bool(args.file) and sys.stderr.isatty())
    from kvmworker.cli.call import caller_for

    with caller_for(settings, "replay") as client:
        outcomes = replay_all(Replayer(client, timeout=settings.timeout), entries, args, progress)
    return 0 if outcomes and all(outcomes) else 1


def replay_all(replayer: Replayer, entries: list[Entry], args: argparse.Namespace, progress: ProgressBar) -> list[bool]:
    outcomes = []
    width = shutil.get_terminal_size((120, 24)).columns
    for done, entry in enumerate(entries, 1):
        try:
            result = replayer.replay(entry, host=args.target_host, dry_run=args.dry_run)
        except NotReplayable as exc:
            progress.clear()
            print(f"{entry.msg_id} {entry.handler}.{entry.command}: skipped, {exc}")
            outcomes.append(False)
        else:
            progress.clear()
            print_result(result, width, sys.stdout)
            outcomes.append(result.same)
        progress.update(done)
    progress.finish()
    same = sum(outcomes)
    print(f"{len(entries)} replayed: {same} same reply, {len(entries) - same} different or skipped")
    return outcomes


def journal_entries(state_dir: Path, msg_ids: list[str]) -> list[Entry]:
    store = JournalStore.open_existing(journal_path(state_dir))
    return [find_entry(store, msg_id) for msg_id in msg_ids]


def load_entries(path: Path) -> list[Entry]:
    with path.open(encoding="utf-8") as lines:
        return [Entry.from_dict(json.loads(line)) for line in lines if line.strip()]


def confirm(entries: list[Entry], host: str | None, answers: TextIO, out: TextIO) -> bool:
    """Lists what will run and asks; without a terminal to ask on, the answer is no."""
    for entry in entries[:20]:
        out.write(f"  {entry.msg_id}  {entry.handler}.{entry.command} → {host or entry.host}\n")
    if len(entries) > 20:
        out.write(f"  … and {len(entries) - 20} more\n")
    if not answers.isatty():
        out.write("not a terminal: give --yes to execute (or --dry-run)\n")
        return False
    out.write(f"Execute these {len(entries)} command(s) again? [y/N] ")
    out.flush()
    return answers.readline().strip().lower() in ("y", "yes")


def print_result(result: ReplayResult, width: int, out: TextIO) -> None:
    entry = result.entry
    verdict = "same reply" if result.same else f"{len(result.differences)} difference(s)"
    out.write(f"== {entry.msg_id} {entry.handler}.{entry.command} → {result.host} as {result.msg_id}: {verdict}\n")
    for line in side_by_side(entry.reply, result.new, width):
        out.write(line + "\n")
    for diff in result.differences:
        out.write(f"   ! {diff.path}: {_value(diff.recorded)} → {_value(diff.new)}\n")


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
