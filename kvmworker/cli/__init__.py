"""``kvmworker``: one entry point, one module per sub-command (INTERFACE §6).

Only the chosen sub-command's module is imported, and each module imports its heavy parts (kombu, libvirt,
pyroute2, uvicorn, pydantic) inside ``run``: ``kvmworker --help`` and ``kvmworker call --help`` stay fast.
Every failure ends as one line on stderr, ``kvmworker: error: …``, with an exit code from cli.common.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

import kvmworker.cli._lean  # noqa: F401  (first: the stand-ins of kvmworker.lazyimport, for the CLI's processes)
from kvmworker import __version__
from kvmworker.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OS,
    EXIT_USAGE,
    CliError,
)
from kvmworker.trust import KeyFileError

# name → one line for `kvmworker --help`; each module has ``register(subparsers)`` and says the same.
COMMANDS = {
    "worker": "run the per-host worker",
    "call": "send one command and print the reply",
    "status": "one screen for the operator on call: broker, libvirt, queue, running, errors, networks",
    "events": "follow the event stream: VMs, networks, links, the worker",
    "serve": "run the worker and the HTTP bridge in one process",
    "bridge": "run the HTTP bridge for legacy callers",
    "users": "add, remove and list the bridge's users",
    "keys": "make Ed25519 key files (0600) and print their public keys",
    "journal": "what the worker received and answered",
    "replay": "send recorded commands again under fresh msg_ids",
    "schema": "write the JSON schemas of the envelope, reply and every command",
    "completion": "print a shell completion script (bash or zsh)",
}


class Parser(argparse.ArgumentParser):
    """A usage error is a CliError (exit 64, one line), not argparse's usage block and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``) the top level plus that one sub-command's module."""
    parser = Parser(prog="kvmworker", description="The per-host agent of the KVM platform.")
    parser.add_argument("--version", action="version", version=f"kvmworker {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"kvmworker.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the top level has no option that takes a value)."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(only=chosen_command(argv) or "").parse_args(argv)
        return args.run(args)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyFileError as exc:  # a key file missing, unsafe or weak: a bad setting, said with its file and reason
        return _fail(str(exc), EXIT_USAGE)
    except BrokenPipeError:
        # `kvmworker schema | head`: the reader has all it wanted; say nothing, as `cat` would
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        if os.environ.get("KVMWORKER_DEBUG"):
            raise
        return _fail(_os_message(exc), EXIT_OS)
    except Exception as exc:
        if os.environ.get("KVMWORKER_DEBUG"):
            raise
        return _fail(f"internal error, {type(exc).__name__}: {exc} (KVMWORKER_DEBUG=1 shows where)", EXIT_INTERNAL)


def _fail(message: str, code: int) -> int:
    with contextlib.suppress(OSError):
        print(f"kvmworker: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def _os_message(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; point it at /dev/null so that the flush cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
