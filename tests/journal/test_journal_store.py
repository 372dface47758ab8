"""The journal file: rows survive a reopen, retention by age and size, the operator's filters."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid

from kvmworker.journal.entry import Received
from kvmworker.journal.query import Query
from kvmworker.journal.store import ANSWERED, SCHEMA_VERSION, JournalStore, journal_path
from kvmworker.protocol.envelope import Reply

DAY = 86400.0
NOW = time.time()


def received(at: float, handler: str = "NetworkHandler", command: str = "create", payload: str = "") -> Received:
    msg_id = str(uuid.uuid4())
    return Received(
        msg_id=msg_id,
        received_at=at,
        host="kvt-h",
        handler=handler,
        command=command,
        dry_run=False,
        redelivered=False,
        envelope={"handler": handler, "command": command, "data": {"payload": payload}},
        properties={"headers": {}},
        delivery={"received_at": at, "answered": "executed"},
    )


def answered(store: JournalStore, r: Received, code: int = 0) -> str:
    store.begin(r)
    store.finish(r.msg_id, ANSWERED, {"code": code, "msg": "m", "data": {"ok": code == 0}}, 0.01)
    return r.msg_id


def test_an_answered_entry_is_found_again_after_the_file_is_reopened(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    msg_id = answered(store, received(NOW))
    store.close()
    entry = JournalStore(tmp_path / "j.sqlite").find(msg_id)
    assert (entry.state, entry.code, entry.reply["data"], entry.duration_ms) == (ANSWERED, 0, {"ok": True}, 10.0)


def test_entries_older_than_the_age_limit_are_dropped_and_running_ones_kept(tmp_path):
    now = 100 * DAY
    store = JournalStore(tmp_path / "j.sqlite", max_age_days=7, clock=lambda: now)
    old = answered(store, received(now - 8 * DAY))
    young = answered(store, received(now - 6 * DAY))
    stuck = received(now - 9 * DAY)
    store.begin(stuck)
    assert store.prune() == 1
    assert store.find(old) is None
    assert store.find(young) is not None
    assert store.find(stuck.msg_id) is not None


def test_the_oldest_entries_go_first_when_the_journal_outgrows_its_size_limit(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite", max_mb=0.25)
    ids = [answered(store, received(NOW - 1000 + i, payload="x" * 2000)) for i in range(400)]
    assert store.prune() > 0
    assert store.size_bytes() < 2 * 1024 * 1024
    assert store._live_bytes() <= 0.25 * 1024 * 1024
    assert store.find(ids[0]) is None
    assert store.find(ids[-1]) is not None
    assert store.count() >= 30  # trimmed to the limit, not emptied


def test_filters_select_by_handler_command_code_time_text_and_msg_id_prefix(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    a = answered(store, received(NOW + 100.0, "NetworkHandler", "create", payload="eth-special"))
    b = answered(store, received(NOW + 200.0, "NetworkHandler", "delete"), code=30003)
    c = answered(store, received(NOW + 300.0, "VmHandler", "start"))

    def ids(**kw):
        return [e.msg_id for e in store.query(Query(**kw))]

    assert ids() == [c, b, a]
    assert ids(newest_first=False) == [a, b, c]
    assert ids(handler="NetworkHandler") == [b, a]
    assert ids(handler="NetworkHandler", command="delete") == [b]
    assert ids(codes=(30003,)) == [b]
    assert ids(since=NOW + 150.0, until=NOW + 250.0) == [b]
    assert ids(text="eth-special") == [a]
    assert ids(text="%") == []
    assert ids(msg_id=c[:8]) == [c]
    assert ids(limit=1) == [c]


def test_a_refused_message_sent_again_only_adds_a_delivery(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    r = received(NOW + 100.0)
    store.refused(r, {"code": 20001, "msg": "m", "data": {}}, 0.0)
    store.refused(r, {"code": 20001, "msg": "m", "data": {}}, 0.0)
    entry = store.find(r.msg_id)
    assert (entry.state, entry.delivery_count, len(entry.deliveries)) == ("refused", 2, 2)


def refused(store: JournalStore, r: Received) -> str:
    store.refused(r, {"code": 20004, "msg": "认证失败", "data": {"detail": "not signed"}}, 0.0)
    return r.msg_id


def test_a_refused_message_is_kept_as_a_small_record_whatever_its_size(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    r = received(NOW, payload="x" * 250_000)
    r.properties = {"headers": {"x-junk": "y" * 100_000}}
    refused(store, r)
    entry = store.find(r.msg_id)
    assert entry.state == "refused"
    assert len(json.dumps(entry.envelope)) <= 1100 and entry.envelope["bytes"] > 250_000
    assert len(json.dumps(entry.properties)) <= 1100
    assert (entry.handler, entry.command) == ("NetworkHandler", "create")


def test_a_long_refusal_reply_is_cut_in_its_data_and_stays_a_reply(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    r = received(NOW)
    store.refused(r, {"code": 20001, "msg": "无效的请求", "data": {"detail": "d" * 5000}}, 0.0)
    reply = Reply.model_validate(store.find(r.msg_id).reply)
    assert (reply.code, reply.msg, reply.data["bytes"]) == (
        20001,
        "无效的请求",
        len(json.dumps({"detail": "d" * 5000}, separators=(",", ":"))),
    )
    assert len(json.dumps(reply.data)) <= 1100


def test_refused_records_have_their_own_bound_and_never_push_an_answered_entry_out(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite", max_mb=0.25, max_refused=50)
    kept = answered(store, received(NOW - 5000))
    for i in range(400):
        refused(store, received(NOW - 4000 + i, payload="x" * 250_000))
    store.prune()
    assert store.find(kept) is not None
    refusals = list(store.query(Query(state="refused")))
    assert len(refusals) == 50
    assert refusals[0].received_at == NOW - 4000 + 399  # the newest are kept


def test_an_entry_whose_signature_could_still_verify_is_not_pruned_for_size_or_age(tmp_path):
    now = 100 * DAY
    store = JournalStore(tmp_path / "j.sqlite", max_mb=0.25, max_age_days=0.5, clock=lambda: now)
    signed = received(now - DAY, payload="s" * 2000)
    signed.expires_at = now + 3600
    protected = answered(store, signed)
    expired = received(now - DAY, payload="e" * 2000)
    expired.expires_at = now - 1
    gone = answered(store, expired)
    ids = [answered(store, received(now - 1000 + i, payload="x" * 2000)) for i in range(400)]
    assert store.prune() > 0
    assert store.find(protected).expires_at == now + 3600
    assert store.find(gone) is None
    assert store.find(ids[0]) is None
    assert store._live_bytes() <= 0.3 * 1024 * 1024


def test_a_msg_id_delivered_again_and_again_does_not_grow_its_row_without_bound(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    r = received(NOW)
    answered(store, r)
    for _ in range(200):
        store.add_delivery(r.msg_id, {"received_at": NOW, "answered": "journal", "reply_to": "q" * 5000})
    entry = store.find(r.msg_id)
    assert entry.delivery_count == 201
    assert len(entry.deliveries) == 32
    assert all(len(d.get("reply_to") or "") <= 256 for d in entry.deliveries)


PREVIOUS_SCHEMA = """
CREATE TABLE entries (
    msg_id TEXT PRIMARY KEY, received_at REAL NOT NULL, host TEXT, handler TEXT, command TEXT,
    dry_run INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, code INTEGER, duration_ms REAL, answered_at REAL,
    redelivered INTEGER NOT NULL DEFAULT 0, envelope TEXT, properties TEXT, reply TEXT,
    deliveries TEXT NOT NULL DEFAULT '[]', delivery_count INTEGER NOT NULL DEFAULT 1
);
"""


def test_a_journal_written_by_the_previous_version_is_migrated_in_place(tmp_path):
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    db.executescript(PREVIOUS_SCHEMA)
    big = json.dumps({"handler": "H", "command": "c", "data": {"junk": "x" * 500_000}})
    rows = [("old-answered", "answered", '{"handler":"H","command":"c","data":{}}'), ("old-refused", "refused", big)]
    for msg_id, state, envelope in rows:
        db.execute(
            "INSERT INTO entries (msg_id, received_at, state, envelope, properties, reply, code) "
            'VALUES (?, ?, ?, ?, \'{}\', \'{"code":0,"msg":"m","data":null}\', 0)',
            (msg_id, NOW, state, envelope),
        )
    db.commit()
    db.close()
    store = JournalStore(path)
    assert store.find("old-answered").envelope == {"handler": "H", "command": "c", "data": {}}
    assert store.find("old-answered").expires_at is None
    assert store.find("old-refused").envelope["bytes"] > 500_000
    assert len(json.dumps(store.find("old-refused").envelope)) <= 1100
    fresh = received(NOW)
    fresh.expires_at = NOW + 60
    answered(store, fresh)
    assert store.find(fresh.msg_id).expires_at == NOW + 60
    store.close()
    assert JournalStore(path).count() == 3  # opening again changes nothing


VERSION_2_INDEXES = """
CREATE INDEX entries_command ON entries (handler, command);
CREATE INDEX entries_code ON entries (code);
"""


def test_a_version_2_journal_loses_its_handler_and_code_indexes_and_the_cli_filters_still_select_right(tmp_path):
    path = journal_path(tmp_path)
    store = JournalStore(path)
    a = answered(store, received(NOW + 100.0, "NetworkHandler", "create"))
    b = answered(store, received(NOW + 200.0, "NetworkHandler", "delete"), code=30003)
    c = answered(store, received(NOW + 300.0, "VmHandler", "start"), code=30003)
    store.close()
    db = sqlite3.connect(path)  # as version 2 left it: its two indexes, user_version 2
    db.executescript(VERSION_2_INDEXES + "PRAGMA user_version=2;")
    db.close()

    def listed(*filters: str) -> list[str]:
        cmd = [sys.executable, "-m", "kvmworker", "journal", "list", "--json", "--state-dir", str(tmp_path), *filters]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        return [entry["msg_id"] for entry in json.loads(out)]

    assert listed("--handler", "NetworkHandler") == [b, a]
    assert listed("--handler", "NetworkHandler", "--command", "delete") == [b]
    assert listed("--code", "30003") == [c, b]
    assert listed("--code", "30003", "--handler", "VmHandler") == [c]
    db = sqlite3.connect(path)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "entries_command" not in indexes and "entries_code" not in indexes
    assert "entries_received" in indexes
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def test_deliveries_and_properties_are_written_as_the_general_json_encoder_writes_them_whatever_they_hold():
    from kvmworker.journal.store import _delivery_text, _short, dumps, properties_json

    plain = {"received_at": NOW, "redelivered": False, "correlation_id": "c", "reply_to": "r", "answered": "executed"}
    deliveries = [
        plain,
        {**plain, "redelivered": True, "correlation_id": None, "reply_to": 'q"é\n\u2028\ud800'},
        {**plain, "correlation_id": "x" * 300},  # cut to MAX_DELIVERY_TEXT
        {**plain, "received_at": float("inf")},
        {**plain, "received_at": 5},
        {**plain, "extra": 1},
    ]
    for delivery in deliveries:
        assert _delivery_text(delivery) == dumps(_short(delivery)), delivery
    assert json.loads(_delivery_text(deliveries[2]))["correlation_id"] == "x" * 256
    props = {"content_type": "application/json", "message_id": "m", "correlation_id": None, "reply_to": "amq.\\é"}
    for properties in ({**props, "headers": {}}, {**props, "headers": {"x-a": [1, 2.5, None]}},
                       {**props, "message_id": 7, "headers": {}}):  # fmt: skip
        assert properties_json(properties) == dumps(properties), properties
