"""The journal's SQLite file (WAL): one row per msg_id — what arrived, every delivery of it, and the reply.

Written by the worker on its command threads, read at the same time by ``kvmworker journal``
(WAL lets readers and the one writer proceed side by side). ``synchronous=NORMAL`` is durable
against a crash of the worker process (the case exactly-once has to survive) though not against
a power cut; a full fsync per command would cost more than the command itself.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvmworker.journal.entry import Entry, Received
from kvmworker.journal.query import Query, where_clause

RUNNING, ANSWERED, REFUSED, INTERRUPTED = "running", "answered", "refused", "interrupted"
JOURNAL_FILE = "journal.sqlite"
PRUNE_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    msg_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    host TEXT,
    handler TEXT,
    command TEXT,
    dry_run INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    code INTEGER,
    duration_ms REAL,
    answered_at REAL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    envelope TEXT,
    properties TEXT,
    reply TEXT,
    deliveries TEXT NOT NULL DEFAULT '[]',
    delivery_count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS entries_received ON entries (received_at);
CREATE INDEX IF NOT EXISTS entries_command ON entries (handler, command);
CREATE INDEX IF NOT EXISTS entries_code ON entries (code);
"""
_JSON_COLUMNS = ("envelope", "properties", "reply", "deliveries")


class JournalStore:
    def __init__(
        self,
        path: Path,
        *,
        max_age_days: float = 30.0,
        max_mb: float = 512.0,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.max_age_s = max_age_days * 86400
        self.max_bytes = int(max_mb * 1024 * 1024)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_prune = clock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        # auto_vacuum must be chosen before the first table exists; it lets pruning give space back.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints are where WAL mode fsyncs; the default (every 1000 pages) put one on every
        # hundredth command. 10000 pages (≤ 40 MB of WAL) halves the journal's cost per command.
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open_existing(cls, path: Path) -> JournalStore:
        """For the operator's CLI: refuses to create an empty journal where none was."""
        if not Path(path).exists():
            raise FileNotFoundError(f"no journal at {path}")
        return cls(path)

    # -- writing (the worker) --------------------------------------------------

    def begin(self, received: Received) -> None:
        """The command is about to run: its row says ``running`` until ``finish``."""
        with self._lock:
            self._db.execute(
                """INSERT INTO entries (msg_id, received_at, host, handler, command, dry_run, state, redelivered,
                                        envelope, properties, deliveries)
                   VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, json_array(json(?)))
                   ON CONFLICT(msg_id) DO UPDATE SET
                       state='running', code=NULL, reply=NULL, envelope=excluded.envelope,
                       properties=excluded.properties, handler=excluded.handler, command=excluded.command,
                       dry_run=excluded.dry_run, redelivered=excluded.redelivered,
                       deliveries=json_insert(deliveries, '$[#]', json(?)), delivery_count=delivery_count + 1""",
                (*_row(received), _dumps(received.delivery)),
            )

    def finish(self, msg_id: str, state: str, reply: dict[str, Any], duration: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE entries SET state=?, code=?, reply=?, duration_ms=?, answered_at=? WHERE msg_id=?",
                (state, reply.get("code"), _dumps(reply), round(duration * 1000, 3), self._clock(), msg_id),
            )
        self._maybe_prune()

    def refused(self, received: Received, reply: dict[str, Any], duration: float) -> None:
        """Answered without running (invalid, unknown, refused by a guard); an existing row only gains a delivery."""
        self._record(received, "refused", reply, duration, on_conflict="")

    def answered(self, received: Received, reply: dict[str, Any], duration: float) -> None:
        """A read-only command, recorded once when answered (it needs no ``running`` claim: a crash
        before this only means it runs again)."""
        self._record(
            received,
            "answered",
            reply,
            duration,
            on_conflict="""state='answered', code=excluded.code, reply=excluded.reply,
                           duration_ms=excluded.duration_ms, answered_at=excluded.answered_at,""",
        )

    def _record(self, received: Received, state: str, reply: dict[str, Any], duration: float, on_conflict: str) -> None:
        """One row for a message answered in one go; ``on_conflict`` says what an existing row takes from it."""
        with self._lock:
            self._db.execute(
                f"""INSERT INTO entries (msg_id, received_at, host, handler, command, dry_run, state, redelivered,
                                        envelope, properties, deliveries, code, reply, duration_ms, answered_at)
                   VALUES (?, ?, ?, ?, ?, ?, '{state}', ?, ?, ?, json_array(json(?)), ?, ?, ?, ?)
                   ON CONFLICT(msg_id) DO UPDATE SET {on_conflict}
                       deliveries=json_insert(deliveries, '$[#]', json(?)), delivery_count=delivery_count + 1""",
                (
                    *_row(received),
                    reply.get("code"),
                    _dumps(reply),
                    round(duration * 1000, 3),
                    self._clock(),
                    _dumps(received.delivery),
                ),
            )
        self._maybe_prune()

    def close_abandoned(self, msg: str, detail: str) -> int:
        """At start: rows a dead process left ``running`` become ``interrupted``, answered with -1.

        Without this, a claim whose message never comes back (expired, purged) would stay
        ``running`` for ever, and retention never drops a running row.
        """
        with self._lock:
            return self._db.execute(
                """UPDATE entries SET state='interrupted', code=-1, answered_at=?,
                       reply=json_object('code', -1, 'msg', ?, 'data',
                                         json_object('detail', ?, 'state', 'interrupted', 'msg_id', msg_id))
                   WHERE state='running'""",
                (self._clock(), msg, detail),
            ).rowcount

    def add_delivery(self, msg_id: str, delivery: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                """UPDATE entries SET deliveries=json_insert(deliveries, '$[#]', json(?)),
                                      delivery_count=delivery_count + 1 WHERE msg_id=?""",
                (_dumps(delivery), msg_id),
            )

    # -- reading ---------------------------------------------------------------

    def find(self, msg_id: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM entries WHERE msg_id=?", (msg_id,)).fetchone()
        return _entry(row) if row else None

    def find_prefix(self, prefix: str) -> list[Entry]:
        """An operator types the first characters of a msg_id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM entries WHERE msg_id >= ? AND msg_id < ? LIMIT 2", (prefix, prefix + "\uffff")
            ).fetchall()
        return [_entry(row) for row in rows]

    def query(self, query: Query) -> Iterator[Entry]:
        where, params = where_clause(query)
        order = "DESC" if query.newest_first else "ASC"
        sql = f"SELECT * FROM entries {where} ORDER BY received_at {order}"
        if query.limit:
            sql += f" LIMIT {int(query.limit)}"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return (_entry(row) for row in rows)

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def size_bytes(self) -> int:
        """The file and its write-ahead log on disk (what ``journal_max_mb`` is compared with)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    # -- retention -------------------------------------------------------------

    def prune(self) -> int:
        """Drop what is older than the age limit, then the oldest until the live data fits the size limit."""
        with self._lock:
            removed = self._db.execute(
                "DELETE FROM entries WHERE received_at < ? AND state != 'running'",
                (self._clock() - self.max_age_s,),
            ).rowcount
            while (live := self._live_bytes()) > self.max_bytes:
                # As many of the oldest rows as the excess is a share of the whole, and a few more.
                rows = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
                batch = 1 + rows * (live - self.max_bytes) // live
                deleted = self._db.execute(
                    """DELETE FROM entries WHERE msg_id IN (SELECT msg_id FROM entries WHERE state != 'running'
                       ORDER BY received_at LIMIT ?)""",
                    (batch,),
                ).rowcount
                removed += deleted
                if not deleted:
                    break
            if removed:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._last_prune = self._clock()
        return removed

    def _maybe_prune(self) -> None:
        if self._clock() - self._last_prune >= PRUNE_EVERY_S:
            self.prune()

    def _live_bytes(self) -> int:
        page_size, pages, free = (
            self._db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count", "freelist_count")
        )
        return page_size * (pages - free)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def journal_path(state_dir: Path) -> Path:
    return Path(state_dir) / JOURNAL_FILE


def _row(received: Received) -> tuple[Any, ...]:
    return (
        received.msg_id,
        received.received_at,
        received.host,
        received.handler,
        received.command,
        int(received.dry_run),
        int(received.redelivered),
        _dumps(received.envelope),
        _dumps(received.properties),
        _dumps(received.delivery),
    )


def _entry(row: sqlite3.Row) -> Entry:
    value = dict(row)
    for column in _JSON_COLUMNS:
        value[column] = json.loads(value[column]) if value[column] is not None else None
    value["dry_run"] = bool(value["dry_run"])
    value["redelivered"] = bool(value["redelivered"])
    return Entry(**value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
