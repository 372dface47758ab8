"""The AMQP worker writes a pass's replies before the journal builds the records of the read-only commands it
answered in that pass (dispatch/deferred.py): the dedup guarantees hold all the same. Over real RabbitMQ with a
plain py-amqp publisher (a foreign orchestrator), and in process, where a pass can be held open to look inside."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest
from kombu import Connection

from kvmworker.dispatch.deferred import collecting, defer
from kvmworker.dispatch.port import Outgoing
from kvmworker.journal.store import JournalStore, _execute_rows, _open_for_writing, journal_path
from kvmworker.protocol.codes import Code
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.names import host_queue_name
from tests.conftest import AMQP_URL, require_broker, unique
from tests.journal.conftest import new_id, request


def _ping(msg_id: str) -> bytes:
    return json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}, "msg_id": msg_id}).encode()


class _Port:
    """Publishes nothing: keeps the replies, and what the journal held for the msg_id when each went out."""

    def __init__(self, store: JournalStore, msg_id: str):
        self._store, self._msg_id = store, msg_id
        self.replies: list[dict] = []
        self.recorded_when_published: list[bool] = []

    def publish(self, outgoing: Outgoing, done) -> None:
        self.replies.append(json.loads(outgoing.body))
        self.recorded_when_published.append(self._store.find(self._msg_id) is not None)
        done(None)

    def settle(self, ack: bool) -> None:
        pass


def test_a_duplicate_in_the_same_pass_gets_the_first_reply_from_the_journal_recorded_after_the_publish(wired):
    msg_id = new_id()
    port = _Port(wired.journal.store, msg_id)
    with collecting():
        wired.pipeline.receive(request("SystemHandler", "ping", {}, msg_id=msg_id, reply_to="r"), port)
        first_published_unrecorded = port.recorded_when_published == [False]
        wired.pipeline.receive(request("SystemHandler", "ping", {}, msg_id=msg_id, reply_to="r"), port)
    assert first_published_unrecorded  # the reply went out before its record was built
    assert port.replies[0]["code"] == Code.OK
    assert port.replies[1] == port.replies[0]  # from the journal: the uptime in it would differ had it run again
    entry = wired.journal.store.find(msg_id)
    assert entry.state == "answered"
    assert [d["answered"] for d in entry.deliveries] == ["executed", "journal"]


def test_result_asked_in_the_same_pass_finds_the_reply_of_a_read_only_command(wired):
    msg_id = new_id()
    port = _Port(wired.journal.store, msg_id)
    with collecting():
        wired.pipeline.receive(request("SystemHandler", "ping", {}, msg_id=msg_id, reply_to="r"), port)
        result = wired.journal.result(msg_id)
    assert result.model_dump(mode="json") == port.replies[0]


def test_work_deferred_in_a_pass_runs_when_it_ends_even_when_the_pass_fails_and_is_refused_outside_one():
    ran: list[str] = []
    assert defer(lambda: ran.append("outside")) is False
    with pytest.raises(RuntimeError), collecting():
        assert defer(lambda: ran.append("first")) is True
        defer(lambda: 1 / 0)  # logged; the work after it still runs
        defer(lambda: ran.append("third"))
        raise RuntimeError("the connection went")
    assert ran == ["first", "third"]


class _Replies:
    """A port that keeps each reply by its msg_id."""

    def __init__(self):
        self.replies: dict[str, dict] = {}

    def publish(self, outgoing: Outgoing, done) -> None:
        self.replies[outgoing.message_id] = json.loads(outgoing.body)
        done(None)

    def settle(self, ack: bool) -> None:
        pass


def test_the_pings_of_one_pass_are_recorded_after_it_together_and_one_record_that_cannot_be_written_is_lost_alone(
    wired, caplog
):
    good, bad = [new_id() for _ in range(5)], new_id()
    port, store = _Replies(), wired.journal.store
    with collecting():
        for msg_id in [*good[:2], bad, *good[2:]]:
            headers = {"x-note": "\ud800"} if msg_id == bad else {}  # a lone surrogate: SQLite cannot take its text
            wired.pipeline.receive(
                request("SystemHandler", "ping", {}, msg_id=msg_id, reply_to="r", headers=headers), port
            )
        assert all(store.find(msg_id) is None for msg_id in good)  # nothing recorded before the pass ends
    assert len(port.replies) == 6 and all(reply["code"] == Code.OK for reply in port.replies.values())
    for msg_id in good:
        entry = store.find(msg_id)
        assert (entry.state, entry.code, entry.reply) == ("answered", 0, port.replies[msg_id])
        assert [d["answered"] for d in entry.deliveries] == ["executed"]
    assert store.find(bad) is None
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lost) == 1 and bad in lost[0] and "lost" in lost[0]


def test_rows_written_as_one_write_alone_are_committed_together_and_a_row_that_fails_takes_no_other_with_it(
    tmp_path,
):
    db = _open_for_writing(tmp_path / "journal.sqlite")
    db.execute("CREATE TABLE kvt_rows (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    sql = "INSERT INTO kvt_rows VALUES (?, ?)"
    assert _execute_rows(sql, [("a", "1"), ("b", None), ("c", "3")], db) == 3  # b breaks NOT NULL
    assert not db.in_transaction  # committed
    reader = sqlite3.connect(tmp_path / "journal.sqlite")
    assert dict(reader.execute("SELECT k, v FROM kvt_rows")) == {"a": "1", "c": "3"}
    reader.close()
    # In a transaction (its group's), a row that fails fails the write and leaves the transaction to its owner.
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError):
        _execute_rows(sql, [("d", "4"), ("e", None)], db)
    assert db.in_transaction
    db.execute("ROLLBACK")
    db.close()


def test_rows_written_alone_whose_commit_fails_leave_no_transaction_open_behind_them(tmp_path):
    db = _open_for_writing(tmp_path / "journal.sqlite")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE kvt_parent (k TEXT PRIMARY KEY)")
    db.execute(  # checked at COMMIT, which then fails and leaves its transaction open
        "CREATE TABLE kvt_child (k TEXT PRIMARY KEY,"
        " parent TEXT REFERENCES kvt_parent (k) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        _execute_rows("INSERT INTO kvt_child VALUES (?, ?)", [("a", "nobody")], db)
    assert not db.in_transaction  # rolled back: what the writer runs next begins a transaction of its own
    db.execute("INSERT INTO kvt_parent VALUES ('p')")  # autocommitted, as the next write would be
    db.close()
    reader = sqlite3.connect(tmp_path / "journal.sqlite")
    assert reader.execute("SELECT k FROM kvt_parent").fetchall() == [("p",)]
    assert reader.execute("SELECT count(*) FROM kvt_child").fetchone() == (0,)
    reader.close()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Settings]:
    url = require_broker("amqp", AMQP_URL)
    settings = Settings(host=unique("kvt-jdr-"), broker_url=url, state_dir=tmp_path / "state")
    running = start_worker(settings)
    try:
        assert running.worker.connected.wait(15)
        yield settings
    finally:
        running.stop(timeout=10)


def _reading_replies(conn: amqp.Connection) -> tuple[amqp.Channel, str, dict[str, dict]]:
    """A channel of ``conn``, an exclusive reply queue it consumes, and the replies by correlation id as they come."""
    channel = conn.channel()
    reply_queue, _, _ = channel.queue_declare("", exclusive=True)
    replies: dict[str, dict] = {}
    channel.basic_consume(
        reply_queue, callback=lambda m: replies.setdefault(m.correlation_id, json.loads(m.body)), no_ack=True
    )
    return channel, reply_queue, replies


def test_two_deliveries_of_one_ping_published_back_to_back_are_answered_alike_and_journalled_once(worker):
    msg_id = str(uuid.uuid4())
    with Connection(worker.broker_url) as kombu_conn:
        conn = kombu_conn.connection  # py-amqp's own connection: no kvmworker code on the sending side
        channel, reply_queue, replies = _reading_replies(conn)
        for correlation_id in ("one", "two"):
            message = amqp.Message(
                _ping(msg_id), content_type="application/json", correlation_id=correlation_id, reply_to=reply_queue
            )
            channel.basic_publish(message, "", host_queue_name(worker.host))
        while len(replies) < 2:
            conn.drain_events(timeout=10)
    assert replies["one"]["code"] == Code.OK
    assert replies["two"] == replies["one"]
    store = JournalStore.open_existing(journal_path(worker.state_dir))
    try:
        entry = store.find(msg_id)
    finally:
        store.close()
    assert (entry.state, entry.code) == ("answered", 0)
    assert [d["answered"] for d in entry.deliveries] == ["executed", "journal"]


def test_a_burst_of_pings_from_a_foreign_publisher_is_journalled_each_once_with_the_reply_it_got(worker):
    msg_ids = [str(uuid.uuid4()) for _ in range(60)]
    with Connection(worker.broker_url) as kombu_conn:
        conn = kombu_conn.connection  # py-amqp's own connection: no kvmworker code on the sending side
        channel, reply_queue, replies = _reading_replies(conn)
        for msg_id in msg_ids:  # back to back: the worker takes several in one pass
            message = amqp.Message(
                _ping(msg_id), content_type="application/json", correlation_id=msg_id, reply_to=reply_queue
            )
            channel.basic_publish(message, "", host_queue_name(worker.host))
        while len(replies) < len(msg_ids):
            conn.drain_events(timeout=10)
    state_dir = str(worker.state_dir)
    listed = subprocess.run(
        [sys.executable, "-m", "kvmworker", "journal", "list", "--json", "--limit", "1000", "--state-dir", state_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    entries = {entry["msg_id"]: entry for entry in json.loads(listed.stdout)}
    assert set(entries) == set(msg_ids)
    for msg_id in msg_ids:
        entry = entries[msg_id]
        assert (entry["state"], entry["command"], entry["reply"]) == ("answered", "ping", replies[msg_id])
        assert [d["answered"] for d in entry["deliveries"]] == ["executed"]
