"""Each msg_id runs once: a duplicate is answered from the journal or waits for the first delivery."""

from __future__ import annotations

import threading
import time

from kvmworker.journal.entry import Received
from kvmworker.journal.store import INTERRUPTED, JournalStore
from kvmworker.protocol.codes import Code
from tests.journal.conftest import new_id, request, wire
from tests.journal.effects import runs_of


def test_a_second_delivery_of_an_answered_msg_id_gets_the_stored_reply_without_running(wired):
    msg_id = new_id()
    first = wired.send("EffectsHandler", "bump", {"name": "a"}, msg_id=msg_id)
    second = wired.send("EffectsHandler", "bump", {"name": "a"}, msg_id=msg_id, redelivered=True)
    assert first.code == Code.OK
    assert second == first
    assert runs_of(wired.effects, "a") == 1
    entry = wired.journal.store.find(msg_id)
    assert [d["answered"] for d in entry.deliveries] == ["executed", "journal"]
    assert entry.deliveries[1]["redelivered"] is True


def test_a_duplicate_arriving_while_the_first_runs_waits_and_gets_the_same_reply(wired):
    msg_id = new_id()
    replies = []

    def send():
        replies.append(wired.send("EffectsHandler", "bump", {"name": "b", "sleep": 0.5}, msg_id=msg_id))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert len(replies) == 3
    assert replies[0].code == Code.OK
    assert replies[0] == replies[1] == replies[2]
    assert runs_of(wired.effects, "b") == 1
    answered = sorted(d["answered"] for d in wired.journal.store.find(msg_id).deliveries)
    assert answered == ["executed", "waited", "waited"]


def test_different_msg_ids_with_the_same_data_both_run(wired):
    wired.send("EffectsHandler", "bump", {"name": "c"}, msg_id=new_id())
    wired.send("EffectsHandler", "bump", {"name": "c"}, msg_id=new_id())
    assert runs_of(wired.effects, "c") == 2


def test_a_command_a_crashed_worker_left_running_is_answered_unknown_and_not_run_again(tmp_path):
    before = wire(tmp_path / "state", tmp_path / "effects")
    msg_id = new_id()
    # What a worker killed mid-command leaves behind: the claim, no reply.
    before.journal.before_execute(_admitted(before, msg_id))
    before.journal.store.close()
    after = wire(tmp_path / "state", tmp_path / "effects")
    reply = after.send("EffectsHandler", "bump", {"name": "d"}, msg_id=msg_id, redelivered=True)
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert reply.data["state"] == INTERRUPTED
    assert runs_of(after.effects, "d") == 0
    assert after.journal.store.find(msg_id).state == INTERRUPTED
    again = after.send("EffectsHandler", "bump", {"name": "d"}, msg_id=msg_id, redelivered=True)
    assert again == reply


def test_a_refused_message_is_recorded_but_does_not_block_a_valid_one_with_the_same_msg_id(wired):
    msg_id = new_id()
    refused = wired.send("EffectsHandler", "bump", {"name": "NOT VALID"}, msg_id=msg_id)
    assert refused.code == Code.INVALID_PARAMETER
    assert wired.journal.store.find(msg_id).state == "refused"
    ok = wired.send("EffectsHandler", "bump", {"name": "e"}, msg_id=msg_id)
    assert ok.code == Code.OK
    assert runs_of(wired.effects, "e") == 1


def test_result_answers_the_stored_reply_of_an_earlier_command(wired):
    msg_id = new_id()
    original = wired.send("EffectsHandler", "bump", {"name": "f"}, msg_id=msg_id)
    assert wired.send("SystemHandler", "result", {"msg_id": msg_id}) == original


def test_result_says_never_seen_for_an_unknown_msg_id(wired):
    reply = wired.send("SystemHandler", "result", {"msg_id": new_id()})
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert reply.data["state"] == "never_seen"


def test_result_says_running_while_the_command_runs(wired):
    msg_id = new_id()
    worker = threading.Thread(
        target=wired.send, args=("EffectsHandler", "bump", {"name": "g", "sleep": 1}), kwargs={"msg_id": msg_id}
    )
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while runs_of(wired.effects, "g") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        reply = wired.send("SystemHandler", "result", {"msg_id": msg_id})
        assert reply.code == Code.UNKNOWN_OUTCOME
        assert reply.data["state"] == "running"
    finally:
        worker.join(10)
    assert wired.send("SystemHandler", "result", {"msg_id": msg_id}).code == Code.OK


def test_result_refuses_a_msg_id_that_is_not_a_uuid(wired):
    assert wired.send("SystemHandler", "result", {"msg_id": "nope"}).code == Code.INVALID_PARAMETER


def _admitted(w, msg_id):
    req = request("EffectsHandler", "bump", {"name": "d"}, msg_id=msg_id)
    return w.pipeline.admit(req)


def test_claims_a_dead_worker_left_running_are_closed_as_interrupted_when_the_next_one_starts(tmp_path):
    before = wire(tmp_path / "state", tmp_path / "effects")
    msg_id = new_id()
    before.journal.before_execute(_admitted(before, msg_id))
    before.journal.store.close()
    after = wire(tmp_path / "state", tmp_path / "effects")
    entry = after.journal.store.find(msg_id)
    assert (entry.state, entry.code, entry.reply["data"]["state"]) == (INTERRUPTED, -1, INTERRUPTED)
    assert entry.reply["msg"] == Code.UNKNOWN_OUTCOME.msg
    assert after.send("SystemHandler", "result", {"msg_id": msg_id}).data["msg_id"] == msg_id


def test_a_read_only_command_is_recorded_once_when_answered_and_a_duplicate_gets_that_reply(wired):
    msg_id = new_id()
    first = wired.send("SystemHandler", "ping", {}, msg_id=msg_id)
    entry = wired.journal.store.find(msg_id)
    assert (entry.state, entry.code, entry.reply) == ("answered", 0, first.model_dump(mode="json"))
    second = wired.send("SystemHandler", "ping", {}, msg_id=msg_id, redelivered=True)
    assert second == first  # the uptime in it would differ had it run again
    assert [d["answered"] for d in wired.journal.store.find(msg_id).deliveries] == ["executed", "journal"]


def test_an_inline_command_never_waits_for_a_running_duplicate_it_is_told_running(wired):
    msg_id = new_id()
    slow = threading.Thread(
        target=wired.send, args=("EffectsHandler", "bump", {"name": "s", "sleep": 1}), kwargs={"msg_id": msg_id}
    )
    slow.start()
    time.sleep(0.2)
    started = time.monotonic()
    reply = wired.send("SystemHandler", "ping", {}, msg_id=msg_id)
    assert time.monotonic() - started < 0.5
    assert (reply.code, reply.data["state"]) == (Code.UNKNOWN_OUTCOME, "running")
    slow.join()


def test_a_msg_id_answered_before_the_worker_restarted_is_answered_from_the_journal_after(tmp_path):
    msg_id = new_id()
    before = wire(tmp_path / "state", tmp_path / "effects")
    first = before.send("EffectsHandler", "bump", {"name": "r"}, msg_id=msg_id)
    before.assembly.close()
    after = wire(tmp_path / "state", tmp_path / "effects")  # it learns the msg_ids already in the file at its start
    try:
        again = after.send("EffectsHandler", "bump", {"name": "r"}, msg_id=msg_id, redelivered=True)
        assert again == first
        assert runs_of(tmp_path / "effects", "r") == 1  # it did not run twice
    finally:
        after.assembly.close()


def test_a_msg_id_another_store_in_this_process_recorded_is_a_duplicate_for_the_worker(wired):
    msg_id = new_id()
    other = JournalStore(wired.journal_file)  # e.g. a second pipeline on the same state directory
    try:
        received = Received(msg_id, time.time(), "kvt-journal", "SystemHandler", "ping", False, False, {}, {}, {})
        other.answered(received, {"code": 0, "msg": "成功", "data": {"recorded": "elsewhere"}}, 0.001)
        reply = wired.send("SystemHandler", "ping", {}, msg_id=msg_id)
        assert reply.data == {"recorded": "elsewhere"}
    finally:
        other.close()
