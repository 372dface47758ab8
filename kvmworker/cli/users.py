"""``kvmworker users add/remove/list --users FILE``: who may log in at the bridge.

The password is read from the terminal (twice) or, for scripts, from stdin with ``--password-stdin``;
never from the command line, where every user of the machine could read it in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from kvmworker.cli.common import EXIT_USAGE, CliError, add_settings_flags, settings_from

if TYPE_CHECKING:
    from kvmworker.bridge.users import UsersFile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("users", help="add, remove and list the bridge's users")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user or change a password")
    add.add_argument("username")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("username")
    listing = actions.add_parser("list", help="list the users")
    for sub in (add, remove, listing):
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
    except ValueError as exc:
        raise CliError(f"users: {exc}", EXIT_USAGE) from None


def _add(users: UsersFile, args: argparse.Namespace) -> int:
    users.add(args.username, _password(args.password_stdin))
    print(f"user {args.username} saved in {users.path}")
    return 0


def _remove(users: UsersFile, args: argparse.Namespace) -> int:
    if not users.remove(args.username):
        print(f"kvmworker: error: users: no user {args.username!r} in {users.path}", file=sys.stderr)
        return 1
    print(f"user {args.username} removed from {users.path}")
    return 0


def _list(users: UsersFile, args: argparse.Namespace) -> int:
    for name in users.names():
        print(name)
    return 0


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ValueError("the two passwords differ")
    return first


ACTIONS = {"add": _add, "remove": _remove, "list": _list}
