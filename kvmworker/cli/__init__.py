"""``kvmworker``: one entry point, one module per sub-command (INTERFACE §6)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module has ``register(subparsers)``; a module that is not there yet is simply not offered.
COMMAND_MODULES = ("worker", "call", "serve", "bridge", "users", "keys", "journal", "replay", "schema")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmworker", description="The per-host agent of the KVM platform.")
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"kvmworker.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kvmworker.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kvmworker.trust.keys import KeyFileError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyFileError as exc:  # a key file that is missing, unsafe or weak: say which and why, no traceback
        print(f"kvmworker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
