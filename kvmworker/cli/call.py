"""``kvmworker call HOST HANDLER COMMAND``: send one command, print the reply."""

from __future__ import annotations

import argparse
import json

from kvmworker.cli.common import add_settings_flags, print_json, settings_from, setup_logging
from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.trust.signing import load_signer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("call", help="send one command and print the reply")
    parser.add_argument("target_host", metavar="HOST")
    parser.add_argument("handler", metavar="HANDLER")
    parser.add_argument("command", metavar="COMMAND")
    parser.add_argument("--data", default="{}", help="the command's data, as JSON")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the plan; change nothing")
    parser.add_argument("--msg-id", default=None, help="idempotency key (a UUID); generated when absent")
    add_settings_flags(parser, "broker", "timeout", "keys-file", "trusted-keys-file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    data = json.loads(args.data)
    with Client(settings.broker_url, signer=load_signer(settings)) as client:
        reply = client.call(
            args.target_host,
            args.handler,
            args.command,
            data,
            timeout=settings.timeout,
            dry_run=args.dry_run,
            msg_id=args.msg_id,
        )
    print_json(reply.model_dump(mode="json"))
    return exit_status(reply.code)


def exit_status(code: int) -> int:
    """0 success, 2 outcome unknown (-1), 1 any other error code."""
    if code == Code.OK:
        return 0
    return 2 if code == Code.UNKNOWN_OUTCOME else 1
