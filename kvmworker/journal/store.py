"""The journal's SQLite file (WAL): one row per msg_id — what arrived, every delivery of it, and the reply.

Written by the worker on its command threads, read at the same time by ``kvmworker journal``
(WAL lets readers and the one writer proceed side by side). ``synchronous=NORMAL`` is durable
against a crash of the worker process (the case exactly-once has to survive): a commit has written its
WAL frames to the kernel before it returns. Not against a power cut or a kernel crash: the WAL is only
fsynced at checkpoints, so those may roll back the commits since the last one (the file stays consistent,
never half a transaction); a full fsync per command would cost more than the command itself.

Records are committed in groups (``GroupWriter``), in the order they were handed over:

- ``begin`` (a mutating command's claim), ``finish`` (its reply, recorded before it is published),
  ``add_delivery`` and ``close_abandoned`` return once committed: a crash after them finds them;
- ``answered`` (a read-only command) and ``refused`` return at once and are committed soon after by
  the writer's thread (within ``writer.LINGER_S``, 20 ms, or so): a crash may lose the last of them, and
  such a command is safe to run again;
- every read (``find``, ``query``…) first waits for what this process has handed over (``find``: for
  that msg_id only), so a record is readable as soon as the call that made it returned.

Two bounds, so that what anyone can send cannot push out what the guard of exactly-once needs:

- *refused* messages (invalid, unauthenticated, expired: nothing ran) are small records, at most
  ``MAX_RECORD_PART`` bytes per part, and only the newest ``max_refused`` are kept;
- *answered* ones are kept under ``max_mb`` (refused records do not count) and ``max_age_days``, but
  never while their signature could still verify (``expires_at``): a captured signed command
  replayed within its validity must find its msg_id and be answered from the journal.

The file and its ``-wal``/``-shm`` are 0600 (see ``kvmworker.statefiles``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from kvmworker.journal import retention
from kvmworker.journal.entry import Entry, Received
from kvmworker.journal.query import Query, where_clause
from kvmworker.journal.retention import Retention
from kvmworker.journal.seen import FIRST_CAPACITY, SeenIds
from kvmworker.journal.writer import GroupWriter
from kvmworker.statefiles import private_file

log = logging.getLogger("kvmworker.journal")

RUNNING, ANSWERED, REFUSED, INTERRUPTED = "running", "answered", "refused", "interrupted"
JOURNAL_FILE = "journal.sqlite"
PRUNE_EVERY_S = 60.0
MAX_RECORD_PART = 1024
"""Bytes (as JSON) kept of a refused message's envelope, of its properties and of its reply: an excerpt beyond."""
MAX_REFUSED = 10_000
TRIM_REFUSED_EVERY = 100
"""Refused records are trimmed to ``max_refused`` after this many new ones (and at every prune)."""
MAX_DELIVERIES_KEPT = 32
"""Deliveries listed per msg_id; beyond, only ``delivery_count`` grows (a replayed msg_id cannot grow its row)."""
MAX_DELIVERY_TEXT = 256

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
"""
# Indexes of earlier versions, dropped (version 3): each cost every recorded command an index update, for filters
# (``--handler/--command``, ``--code``) that an operator runs now and then over a journal bounded by retention;
# those filters now walk ``entries_received`` (newest first) and test each row.
_DROPPED_INDEXES = ("entries_command", "entries_code")
# Columns added after the first release, each with ALTER TABLE ADD COLUMN on a journal that lacks it:
# journals already on disk keep working. Add new columns here (never change or drop one).
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("expires_at", "REAL"),  # a verified signature's x-kvm-expires-at: the row is kept at least until then
    ("size_bytes", "INTEGER"),  # what a refused record holds, for its own bound
)
# Partial: only refused rows are in it, so that answering a command costs no extra index update.
_INDEXES_OF_ADDED = """
CREATE INDEX IF NOT EXISTS entries_refused ON entries (received_at) WHERE state = 'refused';
"""
SCHEMA_VERSION = 3
WAL_AUTOCHECKPOINT_PAGES = 10_000
"""Pages (4 KiB) of WAL after which a commit checkpoints it: the WAL file grows to about 40 MB, then is reused.
40,000 was measured (round 8): no less CPU per message at 64 callers, and one caller's p50 went up by a fifth
(each checkpoint then writes and fsyncs four times as much at once, beside the broker's own writes)."""
_ANSWERED_CONFLICT = """state='answered', code=excluded.code, reply=excluded.reply,
                        duration_ms=excluded.duration_ms, answered_at=excluded.answered_at, size_bytes=NULL,
                        expires_at=max(coalesce(expires_at, 0), coalesce(excluded.expires_at, 0)),"""
"""What an existing row of the msg_id takes from a read-only command's record (``answered``)."""
_JSON_COLUMNS = ("envelope", "properties", "reply", "deliveries")
_ENTRY_FIELDS = frozenset(Entry.__dataclass_fields__)
# Up to MAX_DELIVERIES_KEPT deliveries are listed; the count always grows.
_ADD_DELIVERY = f"""deliveries=CASE WHEN json_array_length(deliveries) < {MAX_DELIVERIES_KEPT}
                       THEN json_insert(deliveries, '$[#]', json(?)) ELSE deliveries END,
                   delivery_count=delivery_count + 1"""


class JournalStore:
    def __init__(
        self,
        path: Path,
        *,
        max_age_days: float = 30.0,
        max_mb: float = 512.0,
        max_refused: int = MAX_REFUSED,
        clock: Callable[[], float] = time.time,
        remember_ids: bool = False,
    ):
        """``remember_ids``: ``find`` answers a msg_id this file cannot hold from memory (``SeenIds``), for the
        worker's store; a store that reads what another process writes (the CLI) must not."""
        self.path = Path(path)
        self.max_age_s = max_age_days * 86400
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_refused = max_refused
        self._clock = clock
        self._last_prune = clock()
        self._refused_since_trim = 0
        private_file(self.path)  # 0600 from the start; SQLite gives -wal and -shm the same mode
        self._writer = GroupWriter.open(self.path, _open_for_writing)
        self._closed = False
        # Reads have a connection of their own: in WAL mode they proceed beside the writer's commits.
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        self._seen: SeenIds | None = None
        if remember_ids:
            count = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
            self._seen = self._writer.remember_ids(lambda: SeenIds(max(FIRST_CAPACITY, 2 * count)), _add_all_ids)

    @classmethod
    def open_existing(cls, path: Path) -> JournalStore:
        """For the operator's CLI: refuses to create an empty journal where none was."""
        if not Path(path).exists():
            raise FileNotFoundError(f"no journal at {path}")
        return cls(path)

    # -- writing (the worker) --------------------------------------------------

    def begin(self, received: Received) -> None:
        """The command is about to run: its row says ``running`` until ``finish`` (committed on return)."""
        row = _row(received)
        self._run(
            received.msg_id,
            f"""INSERT INTO entries (msg_id, received_at, host, handler, command, dry_run, state, redelivered,
                                    envelope, properties, deliveries, expires_at)
               VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, '[' || ? || ']', ?)
               ON CONFLICT(msg_id) DO UPDATE SET
                   state='running', code=NULL, reply=NULL, envelope=excluded.envelope,
                   properties=excluded.properties, handler=excluded.handler, command=excluded.command,
                   dry_run=excluded.dry_run, redelivered=excluded.redelivered, size_bytes=NULL,
                   expires_at=max(coalesce(expires_at, 0), coalesce(excluded.expires_at, 0)),
                   {_ADD_DELIVERY}""",
            (*row, received.expires_at, row[9]),
            inserts=True,
        )

    def finish(self, msg_id: str, state: str, reply: dict[str, Any] | JsonText, duration: float) -> None:
        """The reply of a claimed command, committed on return (before the reply is published)."""
        self._run(
            msg_id,
            "UPDATE entries SET state=?, code=?, reply=?, duration_ms=?, answered_at=? WHERE msg_id=?",
            (state, _code_of(reply), _dumps(reply), round(duration * 1000, 3), self._clock(), msg_id),
        )
        self._maybe_prune()

    def refused(self, received: Received, reply: dict[str, Any], duration: float) -> None:
        """Answered without running (invalid, unknown, refused by a guard); an existing row only gains a delivery.

        Anyone who can publish can make refusals, so each is a small record (``bounded``) under its
        own bound, and none can make room by pushing an answered msg_id out. Not waited for.
        """
        small = dataclasses.replace(
            received,
            handler=_cut(received.handler),
            command=_cut(received.command),
            envelope=bounded(received.envelope),
            properties=bounded(received.properties),
            expires_at=None,  # nothing ran: nothing to guard against running twice
        )
        if isinstance(reply, JsonText):  # its bound cuts into the reply's data: as a dict
            reply = json.loads(reply)
        self._record(small, "refused", bounded_reply(reply), duration, on_conflict="")
        self._refused_since_trim += 1
        if self._refused_since_trim >= TRIM_REFUSED_EVERY:
            self._refused_since_trim = 0
            self._writer.submit(partial(retention.trim_refused, max_refused=self.max_refused))

    def answered(self, received: Received, reply: dict[str, Any] | JsonText, duration: float) -> None:
        """A read-only command, recorded once when answered (it needs no ``running`` claim: a crash
        before this only means it runs again). Not waited for."""
        self._record(received, ANSWERED, reply, duration, on_conflict=_ANSWERED_CONFLICT)

    def answered_all(self, records: list[tuple[Received, dict[str, Any] | JsonText, float]]) -> None:
        """``answered`` for several commands (those one pass of the consumer answered), handed to the writer as one
        write: one statement run over their rows (``_execute_rows``). Each row is recorded as by ``answered``,
        and one that cannot be written is lost alone. Not waited for."""
        sql = _record_sql(ANSWERED, _ANSWERED_CONFLICT)
        rows = [self._params(received, ANSWERED, reply, duration) for received, reply, duration in records]
        self._check_open()
        keys = tuple(received.msg_id for received, _, _ in records)
        self._writer.submit(partial(_execute_rows, sql, rows), keys=keys, inserts=True)
        self._maybe_prune()

    def _record(
        self, received: Received, state: str, reply: dict[str, Any] | JsonText, duration: float, on_conflict: str
    ) -> None:
        """One row for a message answered in one go; ``on_conflict`` says what an existing row takes from it."""
        params = self._params(received, state, reply, duration)
        self._check_open()
        self._writer.submit(
            partial(_execute, _record_sql(state, on_conflict), params), key=received.msg_id, inserts=True
        )
        self._maybe_prune()

    def _params(
        self, received: Received, state: str, reply: dict[str, Any] | JsonText, duration: float
    ) -> tuple[Any, ...]:
        """The parameters of ``_record_sql`` for one message."""
        row, reply_text = _row(received), _dumps(reply)
        return (
            *row,
            _code_of(reply),
            reply_text,
            round(duration * 1000, 3),
            self._clock(),
            received.expires_at,
            sum(len(text.encode()) for text in (*row[7:10], reply_text)) if state == REFUSED else None,
            row[9],
        )

    def close_abandoned(self, msg: str, detail: str) -> int:
        """At start: rows a dead process left ``running`` become ``interrupted``, answered with -1.

        Without this, a claim whose message never comes back (expired, purged) would stay
        ``running`` for ever, and retention never drops a running row.
        """
        return self._run(
            None,
            """UPDATE entries SET state='interrupted', code=-1, answered_at=?,
                   reply=json_object('code', -1, 'msg', ?, 'data',
                                     json_object('detail', ?, 'state', 'interrupted', 'msg_id', msg_id))
               WHERE state='running'""",
            (self._clock(), msg, detail),
        )

    def add_delivery(self, msg_id: str, delivery: dict[str, Any]) -> None:
        """Another arrival of ``msg_id`` (a duplicate, answered from the journal): committed on return."""
        self._run(msg_id, f"UPDATE entries SET {_ADD_DELIVERY} WHERE msg_id=?", (_delivery_text(delivery), msg_id))

    def flush(self) -> None:
        """Wait until every record handed over so far is committed."""
        self._check_open()
        self._writer.flush()

    def _run(self, msg_id: str | None, sql: str, params: tuple[Any, ...], *, inserts: bool = False) -> int:
        """Commit one statement in the next group and wait for it: its row count."""
        self._check_open()
        return self._writer.run(partial(_execute, sql, params), key=msg_id, inserts=inserts)

    def _check_open(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    # -- reading ---------------------------------------------------------------

    def find(self, msg_id: str) -> Entry | None:
        if self._seen is not None and not self._seen.may_hold(msg_id):
            return None  # never written to this file: nothing to wait for, nothing to read
        self._writer.flush(msg_id)
        with self._lock:
            row = self._db.execute("SELECT * FROM entries WHERE msg_id=?", (msg_id,)).fetchone()
        return _entry(row) if row else None

    def find_prefix(self, prefix: str) -> list[Entry]:
        """An operator types the first characters of a msg_id."""
        rows = self._read_all(
            "SELECT * FROM entries WHERE msg_id >= ? AND msg_id < ? LIMIT 2", (prefix, prefix + "\uffff")
        )
        return [_entry(row) for row in rows]

    def query(self, query: Query) -> Iterator[Entry]:
        where, params = where_clause(query)
        order = "DESC" if query.newest_first else "ASC"
        sql = f"SELECT * FROM entries {where} ORDER BY received_at {order}"
        if query.limit:
            sql += f" LIMIT {int(query.limit)}"
        return (_entry(row) for row in self._read_all(sql, params))

    def since_row(self, query: Query, after: int) -> list[tuple[int, Entry]]:
        """Rows written after row ``after`` (SQLite's rowid grows with each insert), oldest first: ``--follow``."""
        where, params = where_clause(query)
        where = f"{where} AND rowid > ?" if where else "WHERE rowid > ?"
        rows = self._read_all(f"SELECT rowid AS row_number, * FROM entries {where} ORDER BY rowid", [*params, after])
        return [(row["row_number"], _entry(row)) for row in rows]

    def last_row(self) -> int:
        return self._read_all("SELECT coalesce(max(rowid), 0) FROM entries")[0][0]

    def states(self, msg_ids: list[str]) -> dict[str, Entry]:
        """The entries of ``msg_ids`` as they are now (``--follow`` shows a running one again when it ends)."""
        if not msg_ids:
            return {}
        rows = self._read_all(f"SELECT * FROM entries WHERE msg_id IN ({','.join('?' * len(msg_ids))})", msg_ids)
        return {row["msg_id"]: _entry(row) for row in rows}

    def count(self) -> int:
        return self._read_all("SELECT count(*) FROM entries")[0][0]

    def size_bytes(self) -> int:
        """The file and its write-ahead log on disk (what ``journal_max_mb`` is compared with)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def _read_all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """After what this process handed over is committed: every record made by a call that returned."""
        self._writer.flush()
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- retention -------------------------------------------------------------

    def prune(self) -> int:
        """Drop what is older than the age limit, then the oldest answered until they fit the size limit
        (``retention.prune``); in order with the records handed over before. How many rows went."""
        self._check_open()
        self._last_prune = self._clock()
        self._refused_since_trim = 0
        return self._writer.run(
            partial(retention.prune, retention=self._retention(), now=self._clock()), in_transaction=False
        )

    def _retention(self) -> Retention:
        return Retention(self.max_age_s, self.max_bytes, self.max_refused)

    def _maybe_prune(self) -> None:
        if self._clock() - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = self._clock()
            self._writer.submit(
                partial(retention.prune, retention=self._retention(), now=self._last_prune), in_transaction=False
            )

    def _live_bytes(self) -> int:
        """The live data (pages in use), as committed after what this process handed over."""
        self._writer.flush()
        with self._lock:
            return retention.live_bytes(self._db)

    def close(self) -> None:
        """Commit what was handed over, then close; the writer closes with its last store in this process."""
        if self._closed:
            return
        self._closed = True
        self._writer.release()
        with self._lock:
            self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def _open_for_writing(path: Path) -> sqlite3.Connection:
    """The writer's connection, the file created or brought up to this version."""
    db = _connect(path)
    # auto_vacuum must be chosen before the first table exists; it lets pruning give space back.
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints are where WAL mode fsyncs; the default (every 1000 pages) put one on every
    # hundredth command. 10000 pages (≤ 40 MB of WAL) halves the journal's cost per command.
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    db.executescript(_SCHEMA)
    _migrate(db)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal written by an earlier version up to this one (columns only added; indexes may go)."""
    present = {row["name"] for row in db.execute("PRAGMA table_info(entries)")}
    for column, declaration in ADDED_COLUMNS:
        if column not in present:
            try:
                db.execute(f"ALTER TABLE entries ADD COLUMN {column} {declaration}")
            except sqlite3.OperationalError as exc:  # the worker and a CLI migrating at the same moment
                if "duplicate column" not in str(exc):
                    raise
    db.executescript(_INDEXES_OF_ADDED)
    for index in _DROPPED_INDEXES:  # every time: an earlier version that opened the file again may have made them
        db.execute(f"DROP INDEX IF EXISTS {index}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        shrunk = _shrink_old_refusals(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if shrunk:
            log.warning("journal: %d refused message(s) recorded whole by an earlier version cut to excerpts", shrunk)


def _shrink_old_refusals(db: sqlite3.Connection) -> int:
    """Earlier versions kept refused bodies whole (up to 1 MiB each): cut them to the excerpt kept now."""
    rows = db.execute(
        """SELECT msg_id, envelope, properties, reply FROM entries WHERE state='refused' AND
           (length(envelope) > ?1 OR length(properties) > ?1 OR length(reply) > ?1 OR size_bytes IS NULL)""",
        (MAX_RECORD_PART,),
    ).fetchall()
    db.execute("BEGIN")
    for row in rows:
        envelope, properties, reply = (_loads(row[column]) for column in ("envelope", "properties", "reply"))
        parts = [bounded(envelope), bounded(properties), bounded_reply(reply)]
        texts = [_dumps(part) for part in parts]
        db.execute(
            "UPDATE entries SET envelope=?, properties=?, reply=?, size_bytes=? WHERE msg_id=?",
            (*texts, sum(len(t.encode()) for t in texts), row["msg_id"]),
        )
    db.execute("COMMIT")
    return len(rows)


@functools.lru_cache(maxsize=8)  # one per state and conflict clause: built once, not per message
def _record_sql(state: str, on_conflict: str) -> str:
    return f"""INSERT INTO entries (msg_id, received_at, host, handler, command, dry_run, state, redelivered,
                                   envelope, properties, deliveries, code, reply, duration_ms, answered_at,
                                   expires_at, size_bytes)
              VALUES (?, ?, ?, ?, ?, ?, '{state}', ?, ?, ?, '[' || ? || ']', ?, ?, ?, ?, ?, ?)
              ON CONFLICT(msg_id) DO UPDATE SET {on_conflict} {_ADD_DELIVERY}"""


class JsonText(str):
    """JSON text already encoded (and redacted): recorded as it is, not parsed and encoded again.
    ``code``: the reply's code, when it is a reply."""

    code: int | None = None


def json_text(text: str, code: int | None = None) -> JsonText:
    """``text`` as ``JsonText``, with the reply's ``code`` when it is a reply (no ``__new__`` of its own: three
    are made per recorded message)."""
    value = JsonText(text)
    if code is not None:
        value.code = code
    return value


def _code_of(reply: dict[str, Any] | JsonText) -> Any:
    return reply.code if isinstance(reply, JsonText) else reply.get("code")


def _add_all_ids(seen: SeenIds, db: sqlite3.Connection) -> None:
    for (msg_id,) in db.execute("SELECT msg_id FROM entries"):
        seen.add(msg_id)


def _execute(sql: str, params: Any, db: sqlite3.Connection) -> int:
    return db.execute(sql, params).rowcount


def _execute_rows(sql: str, rows: list[tuple[Any, ...]], db: sqlite3.Connection) -> int:
    """``sql`` run over ``rows`` at once (``executemany``), in one transaction: its group's, else one of its own, so
    that the rows are never committed one by one. In a group, a row that fails fails the write: the writer rolls
    the group back and runs each of its writes again alone (``GroupWriter._commit``). Alone, the rows are run again
    one by one after a failure, and a row that fails then is logged and lost by itself, as when each was a write
    of its own (a statement that fails leaves the transaction it is in as it was)."""
    if db.in_transaction:
        db.executemany(sql, rows)
        return len(rows)
    db.execute("BEGIN IMMEDIATE")
    try:
        try:
            db.executemany(sql, rows)
        except Exception:
            db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            for params in rows:
                try:
                    db.execute(sql, params)
                except Exception as exc:
                    log.error("journal: the record of %s failed and is lost: %s", params[0], exc)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # never left open: the next group begins its own
            db.execute("ROLLBACK")
        raise
    return len(rows)


def journal_path(state_dir: Path) -> Path:
    return Path(state_dir) / JOURNAL_FILE


def _row(received: Received) -> tuple[Any, ...]:
    """The columns of an insert; the delivery (last) is compact JSON of our own, so the first list of
    deliveries is written as ``'[' || it || ']'``, without SQLite parsing it."""
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
        _delivery_text(received.delivery),
    )


def bounded(value: Any, limit: int = MAX_RECORD_PART) -> Any:
    """``value`` if its JSON fits ``limit`` bytes, else an excerpt of that JSON: ``{"excerpt": …, "bytes": N}``."""
    text = _dumps(value)
    size = len(text.encode())
    if size <= limit:
        return value
    excerpt = text.encode()[:limit].decode("utf-8", errors="ignore")
    return {"excerpt": excerpt, "bytes": size}


def bounded_reply(reply: Any) -> Any:
    """A reply within the bound that is still a reply (``SystemHandler.result`` sends it): only ``data`` is cut."""
    if not isinstance(reply, dict) or len(_dumps(reply).encode()) <= MAX_RECORD_PART:
        return reply
    return {"code": reply.get("code"), "msg": reply.get("msg"), "data": bounded(reply.get("data"), MAX_RECORD_PART)}


def _cut(text: str | None, limit: int = 128) -> str | None:
    return text[:limit] if isinstance(text, str) else text


def _short(delivery: dict[str, Any]) -> dict[str, Any]:
    """A delivery's text fields (correlation id, reply queue) cut to ``MAX_DELIVERY_TEXT``."""
    for value in delivery.values():
        if isinstance(value, str) and len(value) > MAX_DELIVERY_TEXT:
            break
    else:
        return delivery  # nearly always: nothing to cut, no copy
    return {k: _cut(v, MAX_DELIVERY_TEXT) if isinstance(v, str) else v for k, v in delivery.items()}


def _delivery_text(delivery: dict[str, Any]) -> str:
    """``_dumps(_short(delivery))``: a delivery as the journal's middleware makes it (the five fields of
    ``JournalMiddleware._delivery``, nothing to cut) written out at once, for half the general encoder's work;
    any other through ``_dumps``."""
    if len(delivery) == 5:
        at, again, answered = delivery.get("received_at"), delivery.get("redelivered"), delivery.get("answered")
        correlation, reply_to = delivery.get("correlation_id"), delivery.get("reply_to")
        if (
            type(at) is float
            and at - at == 0.0  # finite: the encoder writes Infinity and NaN otherwise
            and type(again) is bool
            and type(answered) is str
            and len(answered) <= MAX_DELIVERY_TEXT
            and _plain_text(correlation)
            and _plain_text(reply_to)
        ):
            return (
                f'{{"received_at":{_FLOAT(at)},"redelivered":{"true" if again else "false"},'
                f'"correlation_id":{_text_json(correlation)},"reply_to":{_text_json(reply_to)},'
                f'"answered":{_STRING(answered)}}}'
            )
    return _dumps(_short(delivery))


def properties_json(properties: dict[str, Any]) -> str:
    """``dumps(properties)``: the four texts of a recorded message's properties (each a str or None, as every
    transport gives them) written out at once, as ``_delivery_text`` writes a delivery; the headers, when there
    are any, by ``dumps``; anything else through ``dumps``."""
    content_type, message_id = properties["content_type"], properties["message_id"]
    correlation_id, reply_to, headers = properties["correlation_id"], properties["reply_to"], properties["headers"]
    if (
        len(properties) == 5
        and _text_or_none(content_type)
        and _text_or_none(message_id)
        and _text_or_none(correlation_id)
        and _text_or_none(reply_to)
    ):
        return (
            f'{{"content_type":{_text_json(content_type)},"message_id":{_text_json(message_id)},'
            f'"correlation_id":{_text_json(correlation_id)},"reply_to":{_text_json(reply_to)},'
            f'"headers":{_dumps(headers) if headers else "{}"}}}'
        )
    return _dumps(properties)


def _text_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def _plain_text(value: Any) -> bool:
    """None, or a str that ``_short`` keeps whole."""
    return value is None or (type(value) is str and len(value) <= MAX_DELIVERY_TEXT)


def _text_json(value: str | None) -> str:
    """A str or None as the journal's JSON writes it."""
    return "null" if value is None else _STRING(value)


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


def _entry(row: sqlite3.Row) -> Entry:
    value = {k: v for k, v in dict(row).items() if k in _ENTRY_FIELDS}
    for column in _JSON_COLUMNS:
        value[column] = json.loads(value[column]) if value[column] is not None else None
    value["dry_run"] = bool(value["dry_run"])
    value["redelivered"] = bool(value["redelivered"])
    return Entry(**value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# The same encoding, made once: ``JSONEncoder.encode`` builds its C encoder anew at every call. No circular
# check: what is recorded comes from JSON and headers, which cannot hold a cycle.
_C_ENCODE = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, str, json.encoder.encode_basestring, None, ":", ",", False, False, True
)


_STRING = json.encoder.encode_basestring  # a str as JSON without escaping what is not ASCII, as ``_ENCODER``
_FLOAT = float.__repr__  # a finite float as ``_ENCODER`` writes it


def dumps(value: Any) -> str:
    """A value as the journal records it (compact JSON, anything unknown as its ``str``)."""
    return _dumps(value)


def _dumps(value: Any) -> str:
    if isinstance(value, JsonText):
        return str(value)  # a plain str for SQLite
    if isinstance(value, str) or _C_ENCODE is None:  # the C encoder takes containers only
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))
