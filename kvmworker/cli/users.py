"""``kvmworker users add/grant/remove/list --users FILE``: who may log in at the bridge, and reach what.

The password is read from the terminal (twice) or, for scripts, from stdin with ``--password-stdin``;
never from the command line, where every user of the machine could read it in the process list.
``--hosts`` and ``--commands`` take patterns (``kvm0*``, ``NetworkHandler.*``, ``*``; comma-separated or
repeated). A new user given neither may log in but reach nothing until granted.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from kvmworker.cli.common import EXIT_USAGE, CliError, add_settings_flags, settings_from

if TYPE_CHECKING:
    from kvmworker.bridge.users import UserRecord, UsersFile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("users", help="add, remove and list the bridge's users")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user or change a password (the user's tokens stop working)")
    add.add_argument("username")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    grant = actions.add_parser("grant", help="set which hosts and commands a user may reach")
    grant.add_argument("username")
    for sub in (add, grant):
        sub.add_argument("--hosts", action="append", help="host patterns the user may reach, e.g. 'kvm0*' or '*'")
        sub.add_argument(
            "--commands", action="append", help="Handler.command patterns, e.g. 'NetworkHandler.*', 'VmHandler.start'"
        )
    remove = actions.add_parser("remove", help="remove a user (the user's tokens stop working)")
    remove.add_argument("username")
    listing = actions.add_parser("list", help="list the users and their grants")
    for sub in (add, grant, remove, listing):
        add_settings_flags(sub, "users")
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.bridge.users import UsersFile

    settings = settings_from(args)
    if settings.users is None:
        raise CliError("users: --users FILE (or KVMWORKER_USERS, or users = in the config file) is required")
    users = UsersFile(settings.users)
    try:
        return ACTIONS[args.action](users, args)
    except (ValueError, LookupError) as exc:
        raise CliError(f"users: {exc}", EXIT_USAGE) from None


def _add(users: UsersFile, args: argparse.Namespace) -> int:
    record = users.add(args.username, _password(args.password_stdin), args.hosts, args.commands)
    print(f"user {args.username} saved in {users.path}: {_grants(record)}")
    if not record.grants.hosts or not record.grants.commands:
        print(f"note: {args.username} can log in but reach nothing until given --hosts and --commands")
    return 0


def _grant(users: UsersFile, args: argparse.Namespace) -> int:
    if args.hosts is None and args.commands is None:
        raise ValueError("grant needs --hosts and/or --commands")
    record = users.grant(args.username, args.hosts, args.commands)
    print(f"user {args.username}: {_grants(record)}")
    return 0


def _remove(users: UsersFile, args: argparse.Namespace) -> int:
    if not users.remove(args.username):
        print(f"kvmworker: error: users: no user {args.username!r} in {users.path}", file=sys.stderr)
        return 1
    print(f"user {args.username} removed from {users.path}")
    return 0


def _list(users: UsersFile, args: argparse.Namespace) -> int:
    for record in users.records():
        print(f"{record.name}\t{_grants(record)}")
    return 0


def _grants(record: UserRecord) -> str:
    hosts, commands = record.grants.hosts, record.grants.commands
    legacy = " (a line without grants: everything, as before grants existed)" if record.legacy else ""
    return f"hosts={','.join(hosts) or '(none)'} commands={','.join(commands) or '(none)'}{legacy}"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ValueError("the two passwords differ")
    return first


ACTIONS = {"add": _add, "grant": _grant, "remove": _remove, "list": _list}
