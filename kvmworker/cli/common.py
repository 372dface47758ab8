"""What every sub-command shares: flags that map onto settings, exit codes, errors, and logging.

Light on purpose: building the parser (``--help``) must not import pydantic, kombu, libvirt or pyroute2;
each sub-command imports what it runs inside its ``run``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

# logging lives in observability; imported here, where every sub-command finds it
from kvmworker.observability.logsetup import JsonFormatter, setup_logging  # noqa: F401
from kvmworker.options import OPTIONS, flag_of, variable_of
from kvmworker.protocol.urls import mask_url

if TYPE_CHECKING:
    from kvmworker.settings import Settings

# Exit codes (README "Command line"): sysexits.h where one fits.
EXIT_OK = 0
EXIT_ERROR_REPLY = 1  # the worker answered, with a code other than 0
EXIT_UNKNOWN_OUTCOME = 2  # -1: no reply in time; the command may or may not have run
EXIT_USAGE = 64  # EX_USAGE: bad flags, bad --data, bad setting or config file
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the broker or the bridge cannot be reached
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the message says what, KVMWORKER_DEBUG=1 shows the traceback
EXIT_OS = 71  # EX_OSERR: the system refused (a port in use, a directory that cannot be written)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (``| head``), as 128 + SIGPIPE


class CliError(Exception):
    """What the operator reads, on one line, and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def add_settings_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    """``--state-dir`` etc.; each also reads KVMWORKER_<NAME> and the config file key <name> (flags win).

    Only these settings are read and validated for this sub-command (``settings_from``).
    """
    names = [name.replace("-", "_") for name in ("config", "log-level", "log-json", *flags)]
    for name in names:
        option = OPTIONS[name]
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{option.help} [{variable_of(name)}]"}
        if option.kind == "flag":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind == "list":
            kwargs["action"] = "append"
            kwargs["metavar"] = name.upper()
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument(flag_of(name), **kwargs)
    parser.set_defaults(settings_used=tuple(names))


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags over variables over the config file, for the settings this sub-command uses; a bad one is a
    CliError (exit 64) that names the flag, variable or file key."""
    from kvmworker.settings import SettingsError, load_settings

    used = getattr(args, "settings_used", ())
    given = {name: getattr(args, name) for name in used if getattr(args, name, None) is not None}
    try:
        return load_settings(given, used)
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def json_object(text: str) -> dict[str, Any]:
    """An argparse ``type``: a JSON object, or a usage error that says where it broke."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {type(value).__name__}")
    return value


def refuse_lonely_memory(url: str, command: str) -> None:
    """memory:// reaches only workers in this same process (``serve``'s own, a test's): refuse at once, with the
    way out, instead of waiting the whole timeout for a reply that cannot come."""
    if not url.startswith("memory:") or memory_has_workers():
        return
    raise CliError(
        f"{command}: the broker is memory://, which lives inside one process (`kvmworker serve`'s own); another "
        "process cannot reach it. Give --broker amqp://… or redis://… (or KVMWORKER_BROKER), or reach a running "
        "`serve`/`bridge` over HTTP with --url http://HOST:8080/",
        EXIT_USAGE,
    )


def memory_has_workers() -> bool:
    """Whether any host queue has been declared on the memory transport of this process."""
    from kombu.transport.memory import Channel

    from kvmworker.protocol.wire import QUEUE_PREFIX, REPLY_PREFIX

    return any(q.startswith(QUEUE_PREFIX) and not q.startswith(REPLY_PREFIX) for q in list(Channel.queues))


def broker_reachable(url: str, timeout: float = 5.0) -> None:
    """Connect once (and close), or raise CliError(69) saying which broker could not be reached and why."""
    from kvmworker.transport.connection import every_url, open_connection

    conn = open_connection(url)
    try:
        conn.ensure_connection(max_retries=every_url(conn), interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        raise CliError(f"cannot reach the broker at {mask_url(url)}: {exc}", EXIT_UNAVAILABLE) from None
    finally:
        conn.release()


def announce(settings: Any, text: str, **fields: Any) -> None:
    """What a server prints on stdout once it listens: the text for a person, or with --log-json one JSON line
    (its fields and the same text), so that a ``jq`` pipeline over the container's output never meets plain text."""
    if settings.log_json:
        print(json.dumps({"event": "listening", **fields, "text": text}, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))
