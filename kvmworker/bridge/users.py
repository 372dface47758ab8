"""The users file: one ``username:argon2-hash`` per line, ``#`` comments, kept mode 0600.

It is read again whenever it changes on disk, so ``kvmworker users add`` takes effect in a running
bridge without a restart.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

from argon2 import PasswordHasher

USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class UsersFile:
    def __init__(self, path: Path, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._hashes: dict[str, str] = {}

    def hash_of(self, username: str) -> str | None:
        return self._current().get(username)

    def names(self) -> list[str]:
        return sorted(self._current())

    def add(self, username: str, password: str) -> None:
        """Add or replace a user (the password is hashed here; it is never stored)."""
        check_username(username)
        if not password:
            raise ValueError("the password must not be empty")
        hashes = dict(self._current())
        hashes[username] = self.hasher.hash(password)
        self._write(hashes)

    def remove(self, username: str) -> bool:
        hashes = dict(self._current())
        if hashes.pop(username, None) is None:
            return False
        self._write(hashes)
        return True

    def _current(self) -> dict[str, str]:
        with self._lock:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._hashes = parse(self.path.read_text()) if stamp else {}
                self._stamp = stamp
            return self._hashes

    def _write(self, hashes: dict[str, str]) -> None:
        """Atomically, so that a bridge reading it never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "# kvmworker bridge users: username:argon2 hash\n" + "".join(
            f"{n}:{h}\n" for n, h in sorted(hashes.items())
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def parse(text: str) -> dict[str, str]:
    hashes = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not USERNAME.fullmatch(name) or not hashed.startswith("$argon2"):
            raise ValueError(f"users file line {number} is not 'username:$argon2...'")
        hashes[name] = hashed
    return hashes


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise ValueError("a username is 1-64 characters of A-Z a-z 0-9 _ . @ -")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size
