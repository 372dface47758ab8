"""Group commit: many writers at once, read-your-writes, and what a killed process leaves on disk.

The rows are read back with plain ``sqlite3`` (or a new process), not through the store that wrote them.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kvmworker.journal.entry import Received
from kvmworker.journal.query import Query
from kvmworker.journal.store import ANSWERED, PRUNE_EVERY_S, REFUSED, RUNNING, JournalStore

ROOT = Path(__file__).resolve().parents[2]
OK = {"code": 0, "msg": "成功", "data": {"ok": True}}
THREADS = 16
PER_THREAD = 60


def received(msg_id: str, at: float = 1_800_000_000.0, **envelope: object) -> Received:
    return Received(
        msg_id=msg_id,
        received_at=at,
        host="kvt-h",
        handler="SystemHandler",
        command="ping",
        dry_run=False,
        redelivered=False,
        envelope={"handler": "SystemHandler", "command": "ping", "data": {}, **envelope},
        properties={"headers": {}},
        delivery={"received_at": at, "answered": "executed"},
    )


def rows(path: Path) -> list[tuple[str, str]]:
    """(msg_id, state) of every row in the order they were first written, read with plain sqlite3."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT msg_id, state FROM entries ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_records_from_many_threads_at_once_are_all_written_each_thread_s_in_its_order(tmp_path):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)

    def write(thread: int) -> None:
        for i in range(PER_THREAD):
            r = received(f"t{thread:02d}-{i:03d}")
            if i % 3 == 0:
                store.answered(r, OK, 0.001)
            elif i % 3 == 1:
                store.begin(r)
                store.finish(r.msg_id, ANSWERED, OK, 0.001)
            else:
                store.refused(r, {"code": 20001, "msg": "m", "data": {}}, 0.0)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store.close()
    written = rows(path)
    assert len(written) == THREADS * PER_THREAD
    expected_state = {0: ANSWERED, 1: ANSWERED, 2: REFUSED}
    assert all(state == expected_state[int(msg_id[-3:]) % 3] for msg_id, state in written)
    for n in range(THREADS):
        mine = [msg_id for msg_id, _ in written if msg_id.startswith(f"t{n:02d}-")]
        assert mine == [f"t{n:02d}-{i:03d}" for i in range(PER_THREAD)]


def test_records_handed_over_from_many_threads_are_written_in_the_order_they_were_handed_over(tmp_path):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    handed_over: list[str] = []
    order = threading.Lock()

    def write(thread: int) -> None:
        for i in range(PER_THREAD):
            r = received(f"t{thread:02d}-{i:03d}")
            with order:  # the order between threads is whatever this lock lets through: noted as it goes
                handed_over.append(r.msg_id)
                if i % 2:
                    store.answered(r, OK, 0.001)
                else:
                    store.refused(r, {"code": 20004, "msg": "m", "data": {}}, 0.0)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store.close()
    assert [msg_id for msg_id, _ in rows(path)] == handed_over


def test_a_read_only_record_is_found_as_soon_as_answered_returns(tmp_path):
    store = JournalStore(tmp_path / "j.sqlite")
    other = JournalStore(tmp_path / "j.sqlite")  # another store on the file in this process (the CLI in-process)
    for i in range(200):  # a backlog, so that the writer's thread is busy when each is looked up
        store.answered(received(f"backlog-{i}"), OK, 0.001)
    for i in range(100):
        store.answered(received(f"ro-{i}"), OK, 0.001)
        entry = store.find(f"ro-{i}")
        assert entry is not None and (entry.state, entry.reply) == (ANSWERED, OK)
        store.refused(received(f"no-{i}"), {"code": 20004, "msg": "m", "data": {}}, 0.0)
        assert other.find(f"no-{i}").state == REFUSED
    assert store.count() == 400
    assert len(list(other.query(Query(state=REFUSED)))) == 100
    other.close()
    store.close()


def test_what_is_queued_is_written_by_close(tmp_path):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    for i in range(500):
        store.answered(received(f"ro-{i:03d}"), OK, 0.001)
    store.close()
    assert rows(path) == [(f"ro-{i:03d}", ANSWERED) for i in range(500)]


CHILD = """
import sys, time
from pathlib import Path
from kvmworker.journal.entry import Received
from kvmworker.journal.store import ANSWERED, JournalStore

path, then = Path(sys.argv[1]), sys.argv[2]
OK = {"code": 0, "msg": "m", "data": {"ran": "once"}}

def received(msg_id):
    return Received(msg_id=msg_id, received_at=time.time(), host="kvt-h", handler="H", command="c", dry_run=False,
                    redelivered=False, envelope={"data": {}}, properties={}, delivery={"answered": "executed"})

store = JournalStore(path)
for i in range(300):  # read-only records, not waited for, queued before the claim
    store.answered(received(f"ro-{i:03d}"), OK, 0.001)
store.begin(received("claim"))
if then == "finish":
    store.finish("claim", ANSWERED, OK, 0.002)
print("returned", flush=True)
if then != "exit":
    time.sleep(60)
"""


def run_child(path: Path, then: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path), then], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "returned"
    return child


@pytest.mark.parametrize("then", ["begin", "finish"])
def test_a_process_killed_right_after_a_claim_or_reply_returned_leaves_it_and_all_before_it_on_disk(tmp_path, then):
    path = tmp_path / "j.sqlite"
    child = run_child(path, then)
    child.send_signal(signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL
    written = dict(rows(path))
    assert written.pop("claim") == (RUNNING if then == "begin" else ANSWERED)
    assert written == {f"ro-{i:03d}": ANSWERED for i in range(300)}  # queued before it: committed with it
    entry = JournalStore.open_existing(path).find("claim")
    assert entry.reply == ({"code": 0, "msg": "m", "data": {"ran": "once"}} if then == "finish" else None)


def test_a_process_that_exits_without_closing_the_store_still_writes_what_it_queued(tmp_path):
    path = tmp_path / "j.sqlite"
    child = run_child(path, "exit")
    assert child.wait(30) == 0
    assert len(rows(path)) == 301
    assert not path.with_name("j.sqlite-wal").exists()  # closed at exit: the WAL folded into the file


def test_a_record_that_cannot_be_written_is_logged_and_the_others_of_its_group_are_written(tmp_path, caplog):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the file: what follows piles up into one group
    store.answered(received("first"), OK, 0.001)
    for i in range(50):
        # A lone surrogate (what json.loads makes of "\\ud800" in a body) cannot be stored as UTF-8.
        bad = {"text": "\ud800"} if i == 25 else {}
        store.answered(received(f"ro-{i:02d}", data=bad), OK, 0.001)
    with caplog.at_level(logging.ERROR, logger="kvmworker.journal"):
        blocker.execute("COMMIT")
        blocker.close()
        store.flush()
    assert [msg_id for msg_id, _ in rows(path)] == ["first", *(f"ro-{i:02d}" for i in range(50) if i != 25)]
    assert "a write for ro-25 failed and is lost" in caplog.text
    with pytest.raises(UnicodeEncodeError):  # waited for: the caller is told
        store.begin(received("claim", data={"text": "\ud800"}))
    store.begin(received("claim"))
    assert store.find("claim").state == RUNNING
    store.close()


def test_a_pass_s_records_handed_over_as_one_write_among_others_lose_only_the_one_that_cannot_be_written(
    tmp_path, caplog
):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the file: what follows piles up into one group
    store.answered(received("first"), OK, 0.001)
    bad = {"text": "\ud800"}  # cannot be stored as UTF-8
    store.answered_all([(received(f"ro-{i}", data=bad if i == 2 else {}), OK, 0.001) for i in range(5)])
    store.answered_all([(received("again"), OK, 0.001), (received("again", at=1_800_000_001.0), OK, 0.002)])
    store.refused(received("last"), {"code": 20004, "msg": "m", "data": {}}, 0.0)
    with caplog.at_level(logging.ERROR, logger="kvmworker.journal"):
        blocker.execute("COMMIT")
        blocker.close()
        store.flush()
    assert rows(path) == [
        ("first", ANSWERED),
        *((f"ro-{i}", ANSWERED) for i in (0, 1, 3, 4)),
        ("again", ANSWERED),
        ("last", REFUSED),
    ]
    assert "the record of ro-2 failed and is lost" in caplog.text
    assert store.find("ro-2") is None
    again = store.find("again")  # the same msg_id twice in one write: its second arrival added to the first
    assert again.delivery_count == 2 and again.duration_ms == 2.0
    store.close()


def test_records_piled_up_into_one_group_are_written_as_one_after_another_even_for_the_same_msg_id(tmp_path):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the file: what follows piles up into one group
    store.answered(received("a"), OK, 0.001)
    store.answered(received("b"), OK, 0.001)
    store.answered(received("a", at=1_800_000_001.0), OK, 0.002)  # its second arrival, in the same run
    store.refused(received("c"), {"code": 20004, "msg": "m", "data": {}}, 0.0)
    store.answered(received("d"), OK, 0.001)
    blocker.execute("COMMIT")
    blocker.close()
    store.close()
    assert rows(path) == [("a", ANSWERED), ("b", ANSWERED), ("c", REFUSED), ("d", ANSWERED)]
    reader = JournalStore.open_existing(path)
    first = reader.find("a")
    assert first.delivery_count == 2
    assert [d["received_at"] for d in first.deliveries] == [1_800_000_000.0, 1_800_000_001.0]
    assert first.duration_ms == 2.0
    reader.close()


def test_a_long_run_of_piled_up_records_is_written_whole_in_order_with_each_repeat_added_to_its_first(tmp_path):
    path = tmp_path / "j.sqlite"
    store = JournalStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the file: what follows piles up into one group
    names = [f"r-{i:03d}" for i in range(100)]
    for i, name in enumerate(names):
        store.answered(received(name, at=1_800_000_000.0 + i), OK, 0.001)
    for i in (0, 31, 32, 33, 99):  # again, far from their first arrival and across where a statement may end
        store.answered(received(names[i], at=1_800_000_500.0 + i), OK, 0.002 + i / 1000)
    blocker.execute("COMMIT")
    blocker.close()
    store.close()
    assert rows(path) == [(name, ANSWERED) for name in names]
    reader = JournalStore.open_existing(path)
    for i, name in enumerate(names):
        entry = reader.find(name)
        again = i in (0, 31, 32, 33, 99)
        assert entry.delivery_count == (2 if again else 1), name
        first = 1_800_000_000.0 + i
        assert [d["received_at"] for d in entry.deliveries] == ([first, 1_800_000_500.0 + i] if again else [first])
        assert entry.duration_ms == (round((0.002 + i / 1000) * 1000, 3) if again else 1.0), name
    reader.close()


def test_records_older_than_the_age_limit_are_pruned_by_the_writer_while_records_come_in(tmp_path):
    now = [1_800_000_000.0]
    store = JournalStore(tmp_path / "j.sqlite", max_age_days=1, clock=lambda: now[0])
    store.answered(received("old", at=now[0] - 2 * 86400), OK, 0.001)
    store.answered(received("young", at=now[0]), OK, 0.001)
    assert store.count() == 2
    now[0] += PRUNE_EVERY_S  # the next record hands a prune over to the writer, behind itself
    store.answered(received("next", at=now[0]), OK, 0.001)
    store.flush()
    assert store.find("old") is None
    assert {e.msg_id for e in store.query(Query())} == {"young", "next"}
    store.close()


def test_a_store_opened_on_a_file_that_replaced_another_writes_to_the_new_file(tmp_path):
    path = tmp_path / "j.sqlite"
    forgotten = JournalStore(path)  # never closed: its writer lives on, on the old file
    forgotten.answered(received("old-file"), OK, 0.001)
    forgotten.flush()
    for name in ("j.sqlite", "j.sqlite-wal", "j.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    store = JournalStore(path)
    store.begin(received("new-file"))
    assert rows(path) == [("new-file", RUNNING)]
    store.close()
