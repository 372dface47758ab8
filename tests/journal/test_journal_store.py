"""The journal file: rows survive a reopen, retention by age and size, the operator's filters."""

from __future__ import annotations

import time
import uuid

from kvmworker.journal.entry import Received
from kvmworker.journal.query import Query
from kvmworker.journal.store import ANSWERED, JournalStore

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
