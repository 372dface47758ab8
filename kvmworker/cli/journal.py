"""``kvmworker journal list|show|export``: what the worker received and answered, read from its state dir.

Reading is safe while the worker runs (the journal is SQLite in WAL mode); ``list --follow`` keeps
reading, like ``tail -f``, until Ctrl-C or SIGTERM (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kvmworker.cli.common import EXIT_USAGE, CliError, add_settings_flags, settings_from, setup_logging
from kvmworker.journal.entry import Entry
from kvmworker.journal.query import Query
from kvmworker.journal.store import RUNNING, JournalStore, journal_path

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
COLUMNS = ("RECEIVED (UTC)", "MSG_ID", "COMMAND", "CODE", "MS", "STATE", "N", "FLAGS")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("journal", help="what the worker received and answered")
    actions = parser.add_subparsers(dest="journal_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="entries, newest first, as a table (or --json)")
    _add_filters(listing, limit=50)
    listing.add_argument("--json", action="store_true", help="one JSON array, for scripts (JSON Lines with --follow)")
    listing.add_argument(
        "--follow", "-f", action="store_true", help="then print new entries as they are written, until Ctrl-C"
    )
    listing.set_defaults(run=_reported(run_list))
    show = actions.add_parser("show", help="everything recorded about one msg_id (a unique prefix will do)")
    show.add_argument("msg_id", metavar="MSG_ID")
    add_settings_flags(show, "state-dir")
    show.set_defaults(run=_reported(run_show))
    export = actions.add_parser("export", help="entries as JSON Lines, oldest first (input of replay --file)")
    _add_filters(export, limit=None)
    export.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")
    export.set_defaults(run=_reported(run_export))


def _reported(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A missing journal or an unknown msg_id is a message for the operator, not a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (FileNotFoundError, LookupError) as exc:
            raise CliError(f"journal: {exc}", EXIT_USAGE) from None

    return guarded


def _add_filters(parser: argparse.ArgumentParser, *, limit: int | None) -> None:
    parser.add_argument("--handler", help="e.g. NetworkHandler")
    parser.add_argument("--command", help="e.g. create")
    parser.add_argument("--code", type=int, action="append", default=[], help="reply code (repeatable)")
    parser.add_argument("--state", choices=("running", "answered", "refused", "interrupted"))
    parser.add_argument("--since", type=parse_when, help="ISO time (UTC unless it says), epoch, or age: 30m, 2h, 7d")
    parser.add_argument("--until", type=parse_when, help="as --since")
    parser.add_argument("--msg-id", help="msg_id or its first characters")
    parser.add_argument("--text", help="text anywhere in the envelope or the reply")
    parser.add_argument("--limit", type=int, default=limit, help=f"at most this many (default {limit or 'all'})")
    add_settings_flags(parser, "state-dir")


def parse_when(text: str, now: float | None = None) -> float:
    """``2026-11-27T10:00`` (UTC unless an offset is given), an epoch, or an age before now: ``90s``, ``2h``, ``7d``."""
    text = text.strip()
    age = _RELATIVE.match(text)
    if age:
        return (time.time() if now is None else now) - float(age.group(1)) * _UNIT_S[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (try 2026-11-27T10:00, 30m, 2h, 7d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def query_from(args: argparse.Namespace, *, newest_first: bool) -> Query:
    return Query(
        handler=args.handler,
        command=args.command,
        codes=tuple(args.code),
        since=args.since,
        until=args.until,
        msg_id=args.msg_id,
        text=args.text,
        state=args.state,
        limit=args.limit,
        newest_first=newest_first,
    )


def open_journal(args: argparse.Namespace) -> JournalStore:
    settings = settings_from(args)
    setup_logging(settings)
    return JournalStore.open_existing(journal_path(settings.state_dir))


def run_list(args: argparse.Namespace) -> int:
    if args.follow:
        return follow(open_journal(args), query_from(args, newest_first=True), args.json, sys.stdout)
    entries = list(open_journal(args).query(query_from(args, newest_first=True)))
    if args.json:
        print(json.dumps([readable(e) for e in entries], ensure_ascii=False, indent=2))
    else:
        print_table(entries, sys.stdout)
    return 0


FOLLOW_EVERY_S = 0.5


def follow(store: JournalStore, query: Query, as_json: bool, out: TextIO, every: float = FOLLOW_EVERY_S) -> int:
    """The last entries (oldest first, as ``tail`` shows them), then each new one as it is written.

    A ``running`` entry is shown again when it ends. Ctrl-C and SIGTERM end it with 0.
    """
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last = store.last_row()
    running: list[str] = []
    try:
        show = _follower(out, as_json)
        for entry in reversed(list(store.query(query))):
            show(entry)
            if entry.state == RUNNING:
                running.append(entry.msg_id)
        while not stop.wait(every):
            for msg_id, entry in store.states(running).items():
                if entry.state != RUNNING:
                    running.remove(msg_id)
                    show(entry)
            for row, entry in store.since_row(replace(query, limit=None), last):
                last = row
                show(entry)
                if entry.state == RUNNING:
                    running.append(entry.msg_id)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit flush is silent
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _follower(out: TextIO, as_json: bool) -> Callable[[Entry], None]:
    widths = [19, 36, 28, 5, 7, 11, 2, 2]
    if not as_json:
        out.write(_line(COLUMNS, widths))
        out.flush()

    def show(entry: Entry) -> None:
        if as_json:
            out.write(json.dumps(readable(entry), ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            out.write(_line(_row(entry), widths))
        out.flush()

    return show


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip() + "\n"


def run_show(args: argparse.Namespace) -> int:
    entry = find_entry(open_journal(args), args.msg_id)
    print(json.dumps(readable(entry), ensure_ascii=False, indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    entries = open_journal(args).query(query_from(args, newest_first=False))
    if args.out is None:
        _export(entries, sys.stdout)
        return 0
    with args.out.open("w", encoding="utf-8") as out:
        count = _export(entries, out)
    print(f"{count} entries written to {args.out}", file=sys.stderr)
    return 0


def _export(entries: Any, out: TextIO) -> int:
    count = 0
    for entry in entries:
        out.write(json.dumps(entry.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def find_entry(store: JournalStore, msg_id: str) -> Entry:
    """By full msg_id or a prefix that only one entry has."""
    entry = store.find(msg_id)
    if entry is not None:
        return entry
    matches = store.find_prefix(msg_id)
    if len(matches) == 1:
        return matches[0]
    raise LookupError(f"{'several entries start with' if matches else 'no entry for'} {msg_id!r}")


def readable(entry: Entry) -> dict[str, Any]:
    """The entry with its times also written out in UTC, for people."""
    value = entry.to_dict()
    value["received"] = iso(entry.received_at)
    value["answered"] = iso(entry.answered_at) if entry.answered_at else None
    for delivery in value["deliveries"]:
        delivery["received"] = iso(delivery.get("received_at"))
    return value


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def print_table(entries: list[Entry], out: TextIO) -> None:
    rows = [COLUMNS, *(_row(e) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if not entries:
        out.write("(no entries)\n")


def _row(entry: Entry) -> tuple[str, ...]:
    name = f"{entry.handler}.{entry.command}" if entry.handler else "(undecodable)"
    redelivered = entry.redelivered or any(d.get("redelivered") for d in entry.deliveries)
    flags = ("R" if redelivered else "") + ("D" if entry.dry_run else "")
    return (
        (iso(entry.received_at) or "")[:19],
        entry.msg_id,
        name,
        "" if entry.code is None else str(entry.code),
        "" if entry.duration_ms is None else f"{entry.duration_ms:.1f}",
        entry.state,
        str(entry.delivery_count),
        flags,
    )
