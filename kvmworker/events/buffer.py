"""The on-disk event buffer and the per-host sequence, in one SQLite file of the state directory (0600).

Numbering and buffering are one transaction: an event gets its ``seq`` and is written in the same commit,
so a crash between the two cannot happen, and an event is published only from this file. Commits are
cheap (WAL, ``synchronous=NORMAL``: no fsync), which keeps ``emit`` fast; the price is that a power loss
may forget the last commits. So the sender calls ``make_durable()`` (an fsync) before anything leaves
the host: a number that someone may have seen is on disk, and is never handed out again.

The buffer is bounded: past ``capacity`` pending events the oldest are deleted and counted in
``dropped`` (kept in the file too), which the next ``sync`` reports and resets.
"""

from __future__ import annotations

from pathlib import Path

from kvmworker.statefiles import StateDatabase

FILE_NAME = "events.sqlite3"
DEFAULT_CAPACITY = 10_000
RECENT = 20
"""Published events kept for ``kvmworker status`` (newest last)."""


class EventBuffer(StateDatabase):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS recent (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
    """

    def __init__(self, path: Path | None, capacity: int = DEFAULT_CAPACITY):
        super().__init__(path)
        if capacity < 1:
            raise ValueError("the event buffer holds at least one event")
        self.capacity = capacity
        self._pending: int | None = None  # cached count, loaded on first use

    @classmethod
    def in_state_dir(cls, state_dir: Path | None, capacity: int = DEFAULT_CAPACITY) -> EventBuffer:
        return cls(None if state_dir is None else Path(state_dir) / FILE_NAME, capacity)

    def append(self, make_body) -> tuple[int, int]:
        """Number and store one event: ``make_body(seq) -> bytes``. Returns (seq, how many old ones were dropped)."""
        with self._lock:
            db = self._connection()
            with db:
                before = self._count(db)
                seq = self._meta(db, "next_seq", 1)
                db.execute("INSERT INTO pending (seq, body) VALUES (?, ?)", (seq, make_body(seq)))
                self._set(db, "next_seq", seq + 1)
                pending = before + 1
                dropped = max(0, pending - self.capacity)
                if dropped:
                    db.execute(
                        "DELETE FROM pending WHERE seq IN (SELECT seq FROM pending ORDER BY seq LIMIT ?)", (dropped,)
                    )
                    self._set(db, "dropped", self._meta(db, "dropped", 0) + dropped)
                self._pending = pending - dropped
        return seq, dropped

    def next_seq(self) -> int:
        with self._lock:
            return self._meta(self._connection(), "next_seq", 1)

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest unpublished events, in order."""
        rows = self._rows("SELECT seq, body FROM pending ORDER BY seq LIMIT ?", (limit,))
        return [(seq, bytes(body)) for seq, body in rows]

    def pending_count(self) -> int:
        with self._lock:
            return self._count(self._connection())

    def published(self, seq: int) -> None:
        """``seq`` reached the broker: out of the buffer, into the recent ones."""
        with self._lock:
            db = self._connection()
            with db:
                row = db.execute("SELECT body FROM pending WHERE seq = ?", (seq,)).fetchone()
                if row is None:  # dropped meanwhile by an overflow
                    return
                db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
                db.execute("INSERT OR REPLACE INTO recent (seq, body) VALUES (?, ?)", (seq, row[0]))
                db.execute("DELETE FROM recent WHERE seq <= ?", (seq - RECENT,))
                if self._pending:
                    self._pending -= 1

    def recent(self, limit: int = RECENT) -> list[bytes]:
        rows = self._rows("SELECT body FROM recent ORDER BY seq DESC LIMIT ?", (limit,))
        return [bytes(body) for (body,) in reversed(rows)]

    def take_dropped(self) -> int:
        """How many events were dropped since the last call (the next ``sync`` reports them); resets the count."""
        with self._lock:
            db = self._connection()
            with db:
                dropped = self._meta(db, "dropped", 0)
                self._set(db, "dropped", 0)
        return dropped

    def dropped(self) -> int:
        with self._lock:
            return self._meta(self._connection(), "dropped", 0)

    def make_durable(self) -> None:
        """fsync what was committed: called before publishing, so a published ``seq`` survives a power loss."""
        if self.path is None:
            return
        with self._lock:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _count(self, db) -> int:
        if self._pending is None:
            self._pending = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        return self._pending

    @staticmethod
    def _meta(db, key: str, default: int) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    @staticmethod
    def _set(db, key: str, value: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
