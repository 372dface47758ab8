"""The state directory is the worker's alone: the directory 0700, every file in it 0600.

It holds the journal (every command and reply the worker saw) and the network store; nobody else on
the host needs to read them. Files are created with their final mode (``os.open`` with 0600, so there
is no moment at which they exist wider), and SQLite gives its ``-wal`` and ``-shm`` files the mode of
the database file. What an older version left wider is tightened at start, with a WARNING per path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

log = logging.getLogger("kvmworker.state")

DIR_MODE = 0o700
FILE_MODE = 0o600


class SharedDirectory(ValueError):
    """The state directory is a shared one (sticky, like /tmp): it must not be made private."""


def private_dir(path: Path) -> Path:
    """``path`` and any missing parents created 0700 (parents the worker creates are its own too)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(directory, DIR_MODE)  # the umask can only narrow 0700
    return path


def private_file(path: Path) -> Path:
    """An empty ``path`` created 0600 unless it exists (an empty file is a valid empty SQLite database)."""
    path = Path(path)
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    return path


def secure_state_dir(path: Path) -> Path:
    """Create the state directory private, or tighten what is there: the directory 0700, files 0600.

    A sticky directory (``/tmp``) is refused: making it 0700 would break everyone else's use of it.
    """
    path = private_dir(path)
    info = path.stat()
    if info.st_mode & stat.S_ISVTX:
        raise SharedDirectory(f"state_dir {path} is a shared directory (sticky bit): give the worker its own")
    if not any(path.iterdir()):  # made just now (``mkdir -p``, an older ``serve``): nothing was exposed
        os.chmod(path, stat.S_IMODE(info.st_mode) & DIR_MODE)
        return path
    _tighten(path, info, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            child = Path(root, name)
            _tighten(child, child.lstat(), DIR_MODE)
        for name in files:
            child = Path(root, name)
            _tighten(child, child.lstat(), FILE_MODE)
    return path


def _tighten(path: Path, info: os.stat_result, mode: int) -> None:
    """Remove group and other permissions; symlinks and files of other users are left alone (and said)."""
    if stat.S_ISLNK(info.st_mode):
        return
    if not info.st_mode & 0o077:
        return
    if info.st_uid != os.geteuid():
        log.warning("%s is readable by others (mode %o) and not ours to change", path, stat.S_IMODE(info.st_mode))
        return
    os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
    log.warning(
        "%s was readable by others (mode %o): now %o (the state directory holds every command and reply)",
        path,
        stat.S_IMODE(info.st_mode),
        stat.S_IMODE(info.st_mode) & mode,
    )


class StateDatabase:
    """One small SQLite file in the state directory: opened on first use (so building the handlers touches no
    disk), 0600 from its first moment, WAL with ``synchronous=NORMAL`` (a commit costs no fsync; a crash never
    corrupts it), one statement at a time. ``path`` None keeps it in memory (tests, tools)."""

    SCHEMA = ""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return list(self._connection().execute(sql, args))

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            db = self._connection()
            with db:
                db.execute(sql, args)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            where = ":memory:" if self.path is None else str(private_file(self.path))
            db = sqlite3.connect(where, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self.SCHEMA)
            db.isolation_level = "DEFERRED"
            self._db = db
        return self._db
