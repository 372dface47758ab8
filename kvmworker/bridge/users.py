"""The users file: who may log in at the bridge, and what each may reach. Kept mode 0600.

One user a line, ``#`` comments::

    alice:$argon2id$v=19$...
    bob:$argon2id$v=19$... hosts=kvm01,kvm02 commands=NetworkHandler.*,SystemHandler.ping

``hosts=`` and ``commands=`` are comma-separated patterns (``*`` and ``?`` as in shell globs) over
host names and ``Handler.command``. A line without them (written before grants existed) reaches every
host and command, as it always did; ``kvmworker users add`` without ``--hosts``/``--commands`` grants
nothing. The file is read again whenever it changes on disk, so ``kvmworker users add/remove`` takes
effect in a running bridge without a restart: tokens of a removed user, or issued before a password
change, stop working at once (see ``tokens.py``).
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.:*?-]{1,200}")
COMMAND_PATTERN = re.compile(r"[A-Za-z0-9_*?]{1,64}(\.[A-Za-z0-9_*?]{1,64})?")
EVERYTHING = ("*",)


@dataclass(frozen=True)
class Grants:
    """What a user may reach: host patterns and ``Handler.command`` patterns. Empty: nothing."""

    hosts: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def refusal(self, host: str, handler: str, command: str) -> str | None:
        """None when allowed, else what is refused (for the reply's detail)."""
        # ``*`` matches every name (fnmatch gives ``/`` no meaning): full access skips the pattern matching
        if self.hosts != EVERYTHING and not any(fnmatch.fnmatchcase(host, p) for p in self.hosts):
            return f"host {host[:64]!r} (this user may reach: {_listed(self.hosts)})"
        name = f"{handler}.{command}"
        if self.commands != EVERYTHING and not any(
            fnmatch.fnmatchcase(name, _command_pattern(p)) for p in self.commands
        ):
            return f"command {name} (this user may run: {_listed(self.commands)})"
        return None

    def line_fields(self) -> str:
        return f" hosts={','.join(self.hosts)} commands={','.join(self.commands)}"


FULL_ACCESS = Grants(EVERYTHING, EVERYTHING)


@dataclass(frozen=True)
class UserRecord:
    name: str
    hash: str
    grants: Grants
    legacy: bool = False  # no grant fields on its line: full access, as before grants existed

    def line(self) -> str:
        return f"{self.name}:{self.hash}{'' if self.legacy else self.grants.line_fields()}\n"


class UsersFile:
    def __init__(self, path: Path, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._records: dict[str, UserRecord] = {}

    def record(self, username: str) -> UserRecord | None:
        return self._current().get(username)

    def hash_of(self, username: str) -> str | None:
        record = self.record(username)
        return record.hash if record else None

    def names(self) -> list[str]:
        return sorted(self._current())

    def records(self) -> list[UserRecord]:
        return [self._current()[name] for name in self.names()]

    def add(
        self, username: str, password: str, hosts: list[str] | None = None, commands: list[str] | None = None
    ) -> UserRecord:
        """Add a user or set a password (hashed here; never stored). Grants not given: kept, or none for a new user."""
        check_username(username)
        if not password:
            raise ValueError("the password must not be empty")
        records = dict(self._current())
        before = records.get(username)
        grants = _merged_grants(before, hosts, commands)
        records[username] = UserRecord(username, self.hasher.hash(password), grants)
        self._write(records)
        return records[username]

    def grant(self, username: str, hosts: list[str] | None, commands: list[str] | None) -> UserRecord:
        """Change what a user may reach, keeping the password (and so the user's live tokens)."""
        records = dict(self._current())
        before = records.get(username)
        if before is None:
            raise LookupError(f"no user {username!r} in {self.path}")
        records[username] = UserRecord(username, before.hash, _merged_grants(before, hosts, commands))
        self._write(records)
        return records[username]

    def remove(self, username: str) -> bool:
        records = dict(self._current())
        if records.pop(username, None) is None:
            return False
        self._write(records)
        return True

    def _current(self) -> dict[str, UserRecord]:
        with self._lock:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._records = parse(self.path.read_text()) if stamp else {}
                self._stamp = stamp
            return self._records

    def _write(self, records: dict[str, UserRecord]) -> None:
        """Atomically, so that a bridge reading it never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "# kvmworker bridge users: username:argon2-hash [hosts=PATTERNS commands=PATTERNS]\n" + "".join(
            records[name].line() for name in sorted(records)
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def parse(text: str) -> dict[str, UserRecord]:
    records = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        hashed, *fields = rest.split()
        if not sep or not USERNAME.fullmatch(name) or not hashed.startswith("$argon2"):
            raise ValueError(f"users file line {number} is not 'username:$argon2... [hosts=… commands=…]'")
        records[name] = _record(name, hashed, fields, number)
    return records


def _record(name: str, hashed: str, fields: list[str], number: int) -> UserRecord:
    if not fields:
        return UserRecord(name, hashed, FULL_ACCESS, legacy=True)
    values: dict[str, tuple[str, ...]] = {"hosts": (), "commands": ()}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or key not in values:
            raise ValueError(f"users file line {number}: {item[:40]!r} is not hosts=… or commands=…")
        values[key] = parse_patterns(value, key)
    return UserRecord(name, hashed, Grants(values["hosts"], values["commands"]))


def parse_patterns(text: str, kind: str) -> tuple[str, ...]:
    """``a,b*`` → ('a', 'b*'); each checked against what a host name or ``Handler.command`` may be."""
    shape = HOST_PATTERN if kind == "hosts" else COMMAND_PATTERN
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    for pattern in patterns:
        if not shape.fullmatch(pattern):
            what = "a host pattern" if kind == "hosts" else "a Handler.command pattern"
            raise ValueError(f"{pattern[:64]!r} is not {what}")
    return patterns


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise ValueError("a username is 1-64 characters of A-Z a-z 0-9 _ . @ -")


def _merged_grants(before: UserRecord | None, hosts: list[str] | None, commands: list[str] | None) -> Grants:
    base = before.grants if before is not None else Grants()
    return Grants(
        base.hosts if hosts is None else parse_patterns(",".join(hosts), "hosts"),
        base.commands if commands is None else parse_patterns(",".join(commands), "commands"),
    )


def _command_pattern(pattern: str) -> str:
    """``NetworkHandler`` alone means all of its commands."""
    return pattern if "." in pattern or pattern == "*" else f"{pattern}.*"


def _listed(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) if patterns else "nothing"


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns
