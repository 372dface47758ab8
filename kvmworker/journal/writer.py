"""Group commit: the one writer of a SQLite file in this process, committing what it is handed in groups.

A commit is the dear part of a small write (the WAL frame, the locks). So writes queue here, in order,
and whoever writes takes everything queued and commits it as one transaction:

- a write the caller waits for (``run``) is written by the caller itself when nobody is writing (no thread
  hop when the journal is quiet), else it joins the next group; it returns once that group is committed;
- a write nobody waits for (``submit``) is written by the writer's own thread, in order with the rest,
  within ``LINGER_S`` or so (after a group the thread lingers, so that what keeps coming shares the next
  commit and the next wake-up); a crash may lose it, never a ``run`` write that returned, nor one
  queued before it;
- ``flush`` waits for what is queued (or for the writes of one key), so that readers see it.

One ``GroupWriter`` per file and process (``open`` hands out the same one, counted): every store on a
file in this process writes through it and reads what the others wrote. A writer whose users never
released it lives until the process ends; at its exit, what is queued is written and the file closed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from kvmworker.journal.seen import SeenIds

log = logging.getLogger("kvmworker.journal")

Write = Callable[[sqlite3.Connection], Any]
"""One change on the connection: a single statement (atomic alone), or marked ``in_transaction=False``."""
MAX_GROUP = 512
"""Writes per transaction at most: the write lock is not held for long, whatever piles up."""
LINGER_S = 0.02
"""After writing, the thread lets what comes next gather this long: one commit and one wake-up for them.
Each commit costs its WAL pages and a wake-up: at the rates a worker sees, 5 ms made groups of a few records and
cost ~13-21 µs more CPU per record than 20 ms at 1,000 records/s, ~8 µs at 2,500/s (bench/journal_linger.py).
It is how long a record nobody waits for (read-only, refused: safe to lose) may wait to be committed."""
MAX_QUEUED = 4096
"""Writes nobody waits for, at most, before ``submit`` waits too: the queue cannot outgrow a slow disk."""


@dataclass(eq=False, slots=True)  # one per record: made fast, kept small
class _Queued:
    write: Write
    seq: int
    keys: tuple[str, ...]
    """The msg_ids it writes (``flush(key)`` waits for it): one, or a pass's records (``submit(keys=…)``)."""
    in_transaction: bool
    waited: bool
    wake: threading.Condition | None = None
    """Its caller's own, once it had to wait: woken when it is written, or when it is its turn to write."""
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class GroupWriter:
    _open: ClassVar[dict[str, GroupWriter]] = {}  # by path: the writer a new store on that file joins
    _unclosed: ClassVar[set[GroupWriter]] = set()  # every writer not closed yet: closed at exit
    _open_lock: ClassVar[threading.Lock] = threading.Lock()
    _closes_at_exit: ClassVar[bool] = False

    def __init__(self, path: str, db: sqlite3.Connection):
        self._path = path
        self._db = db
        self._file = _identity(path)
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # the writer's thread waits here for writes
        self._flushed = threading.Condition(self._lock)  # flush() waits here
        self._flushing = 0
        self._queue: list[_Queued] = []
        self._waiting: list[_Queued] = []  # writes whose callers sleep until written (or their turn)
        self._last_seq = 0  # the newest write queued
        self._done_seq = 0  # every write up to this one is done (committed, or failed and reported)
        self._pending_keys: dict[str, int] = {}  # key → its newest write not done yet
        self._busy = False  # a group is being written, by the thread or by a caller
        self._closed = False
        self._thread: threading.Thread | None = None
        self._asleep = False  # the thread waits for a write (not lingering): the next one wakes it
        self._users = 0
        self.seen: SeenIds | None = None
        """The msg_ids the file may hold, once a store asked (``remember_ids``); every store adds its inserts."""
        self._seen_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, connect: Callable[[Path], sqlite3.Connection]) -> GroupWriter:
        """The writer of ``path`` in this process; ``connect`` opens (and prepares) its connection on first use."""
        key = os.path.realpath(path)
        with cls._open_lock:
            writer = cls._open.get(key)
            if writer is None or writer._file != _identity(key):  # none yet, or its file was replaced since
                writer = cls._open[key] = cls(key, connect(Path(key)))
                cls._unclosed.add(writer)
                if not cls._closes_at_exit:
                    atexit.register(cls.close_all)
                    cls._closes_at_exit = True
            writer._users += 1
            return writer

    def release(self) -> None:
        """One user fewer; the last one writes what is queued, stops the thread and closes the connection."""
        self.flush()
        with GroupWriter._open_lock:
            self._users -= 1
            if self._users > 0:
                return
            if GroupWriter._open.get(self._path) is self:
                del GroupWriter._open[self._path]
            GroupWriter._unclosed.discard(self)
        self._close()

    @classmethod
    def close_all(cls) -> None:
        """At exit: every writer writes what is queued and closes (SQLite then folds the WAL into the file)."""
        with cls._open_lock:
            writers = list(cls._unclosed)
            cls._open.clear()
            cls._unclosed.clear()
        for writer in writers:
            writer._close()

    def _close(self) -> None:
        with self._lock:
            self._closed = True  # what comes after this is refused; what came before is written
            self._wait_locked(self._last_seq)
            self._queued.notify()
        if self._thread is not None:
            self._thread.join()
        self._db.close()

    def remember_ids(self, make: Callable[[], SeenIds], fill: Callable[[SeenIds, sqlite3.Connection], Any]) -> SeenIds:
        """The file's ``SeenIds``, made once: set before ``fill`` reads the file in order with the writes queued,
        so that an insert queued before the read is in the file it reads, and one queued after is added."""
        with self._seen_lock:
            if self.seen is None:
                seen = make()
                with self._lock:
                    self.seen = seen
                self.run(partial(fill, seen), in_transaction=False)
            return self.seen

    # -- writing ---------------------------------------------------------------

    def run(self, write: Write, *, key: str | None = None, in_transaction: bool = True, inserts: bool = False) -> Any:
        """Write and wait until committed: ``write``'s result, or its exception raised here. ``inserts``: it may add
        the row of ``key`` (the msg_id), which ``seen`` then holds."""
        with self._lock:
            queued = self._enqueue(write, _keys(key), in_transaction, waited=True, inserts=inserts)
            while not queued.done:
                if not self._busy:
                    self._write_queue_locked()
                    continue
                if queued.wake is None:  # made only when needed: quiet, the caller writes at once
                    queued.wake = threading.Condition(self._lock)
                    self._waiting.append(queued)
                queued.wake.wait()
        if queued.error is not None:
            raise queued.error
        return queued.result

    def submit(
        self,
        write: Write,
        *,
        key: str | None = None,
        keys: tuple[str, ...] = (),
        in_transaction: bool = True,
        inserts: bool = False,
    ) -> None:
        """Write soon, in order, without waiting (a failure is logged). ``inserts``: as for ``run``. ``keys``: the
        msg_ids of a write of several rows, instead of ``key``."""
        with self._lock:
            queued = self._enqueue(write, _keys(key) or keys, in_transaction, waited=False, inserts=inserts)
            if len(self._queue) >= MAX_QUEUED:
                self._wait_locked(queued.seq)
            elif self._thread is None:
                self._start_thread()
            elif self._asleep or len(self._queue) >= MAX_GROUP:
                self._queued.notify()

    def flush(self, key: str | None = None) -> None:
        """Wait until what is queued now (only the writes of ``key``, if given) is written."""
        with self._lock:
            seq = self._last_seq if key is None else self._pending_keys.get(key, 0)
            self._wait_locked(seq)

    def _enqueue(
        self, write: Write, keys: tuple[str, ...], in_transaction: bool, waited: bool, inserts: bool
    ) -> _Queued:
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        self._last_seq += 1
        queued = _Queued(write, self._last_seq, keys, in_transaction, waited)
        self._queue.append(queued)
        seen, pending = self.seen if inserts else None, self._pending_keys
        for key in keys:
            if seen is not None:  # under the lock: in order with ``remember_ids``
                seen.add(key)
            pending[key] = queued.seq
        return queued

    def _wait_locked(self, seq: int) -> None:
        while self._done_seq < seq:
            if self._busy:
                self._flushing += 1
                self._flushed.wait()
                self._flushing -= 1
            else:
                self._write_queue_locked()

    def _write_queue_locked(self) -> None:
        """Take the queue's head (the lock held), write it with the lock released, then tell the waiters."""
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        self._busy = True
        self._lock.release()
        try:
            self._write_all(group)
        finally:
            self._lock.acquire()
            self._busy = False
            self._done_seq = group[-1].seq
            self._written_locked(group)
        for queued in group:
            if queued.error is not None and not queued.waited:
                log.error(
                    "journal: a write%s failed and is lost: %s",
                    f" for {', '.join(queued.keys)}" if queued.keys else "",
                    queued.error,
                )

    def _written_locked(self, group: list[_Queued]) -> None:
        """Wake who waits for ``group``, and who writes next: the first caller waiting in the queue, else the thread."""
        pending = self._pending_keys
        for queued in group:
            for key in queued.keys:
                if pending.get(key) == queued.seq:
                    del pending[key]
        still = []
        for queued in self._waiting:
            if queued.seq <= self._done_seq:
                queued.wake.notify()
            else:
                still.append(queued)
        self._waiting = still
        if self._flushing:
            self._flushed.notify_all()
        if still:
            min(still, key=lambda queued: queued.seq).wake.notify()
        elif self._queue:
            self._start_thread()
            if self._asleep:
                self._queued.notify()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="kvmworker-journal", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        """The thread: write what nobody waits for, then linger for more while it keeps coming; idle, sleep."""
        with self._lock:
            while True:
                if self._queue and not self._busy:
                    self._write_queue_locked()
                    if not self._closed:
                        self._queued.wait(LINGER_S)
                    continue
                if self._closed and not self._queue:
                    return
                self._asleep = True  # nothing to write, or the one writing now hands the queue on when done
                self._queued.wait()
                self._asleep = False

    # -- one group -------------------------------------------------------------

    def _write_all(self, group: list[_Queued]) -> None:
        """In order: runs of transactional writes, each run one transaction; the others alone."""
        run: list[_Queued] = []
        try:
            for queued in group:
                if queued.in_transaction:
                    run.append(queued)
                    continue
                self._commit(run)
                run = []
                self._alone(queued)
            self._commit(run)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: no waiter takes it for written
            for queued in group:
                if not queued.done:
                    queued.error, queued.done = exc, True
            raise

    def _alone(self, queued: _Queued) -> None:
        try:
            queued.result = queued.write(self._db)
        except Exception as exc:
            queued.error = exc
        queued.done = True

    def _commit(self, run: list[_Queued]) -> None:
        if len(run) == 1:  # on its own a statement is its own transaction: no BEGIN and COMMIT to pay
            self._alone(run[0])
            return
        if not run:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            _fail(run, exc)
            return
        try:
            for queued in run:
                queued.result = queued.write(self._db)
        except Exception:
            self._rollback()
            for queued in run:  # one bad write must not take the others with it: each again, alone
                queued.result = None
                self._alone(queued)
            return
        try:
            self._db.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            _fail(run, exc)
            return
        for queued in run:
            queued.done = True

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _keys(key: str | None) -> tuple[str, ...]:
    return () if key is None else (key,)


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _fail(run: list[_Queued], exc: Exception) -> None:
    for queued in run:
        queued.result, queued.error, queued.done = None, exc, True
