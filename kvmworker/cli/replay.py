"""``kvmworker replay MSG_ID… | --file export.jsonl``: send recorded commands again and compare the replies.

Each command goes out under a fresh msg_id. Nothing is executed before the operator has seen the
real commands (handler, command, data, where they were recorded, who sent them) and said yes
(``--yes`` for scripts); ``--dry-run`` asks every handler for its plan instead and needs no consent.
Entries the worker refused (unauthenticated, expired, invalid) are not sent unless ``--force``:
replay signs what it sends, and must not turn a refused message into an authenticated one.

The output stays short at volume: one line per reply that differs (up to ``--max-details``), then a
summary per handler.command; volatile fields (uptime, timestamps, durations) do not count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvmworker.cli.common import add_settings_flags
from kvmworker.journal.volatile import VOLATILE_FIELDS

MAX_DETAILS = 10
"""Replies shown in detail without --verbose; the rest are counted in the summary."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("replay", help="send recorded commands again under fresh msg_ids")
    parser.add_argument("msg_ids", nargs="*", metavar="MSG_ID", help="from this host's journal (prefixes will do)")
    parser.add_argument("--file", type=Path, help="a `kvmworker journal export` file (JSON Lines)")
    parser.add_argument("--host", dest="target_host", help="send to this host (default: the host that recorded it)")
    parser.add_argument("--dry-run", action="store_true", help="show each handler's plan; change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask before executing")
    parser.add_argument(
        "--force", action="store_true", help="also send entries the worker refused (unauthenticated, expired, …)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="FIELD",
        help="do not compare this field: a key name at any depth (run) or a dotted path (data.ports.name); repeatable",
    )
    parser.add_argument(
        "--no-default-ignore",
        dest="default_ignore",
        action="store_false",
        help=f"also compare the volatile fields ignored by default ({', '.join(VOLATILE_FIELDS)})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document: the result per message and a summary")
    parser.add_argument("--verbose", "-v", action="store_true", help="every reply, side by side, and every difference")
    parser.add_argument(
        "--max-details",
        type=int,
        default=MAX_DETAILS,
        metavar="N",
        help=f"differing replies shown (default {MAX_DETAILS})",
    )
    add_settings_flags(
        parser, "state-dir", "broker", "url", "token", "token-file", "timeout", "keys-file", "trusted-keys-file"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.cli.replaying import run as replay

    return replay(args)
