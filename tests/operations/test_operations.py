"""§8 with a real worker on RabbitMQ: operations, cancel, result with progress, and the operation events.

SlowHandler's commands record when they start and how they end (tests/operations/handlers.py), so "it never
ran" and "it stopped" are read from their effects, not from the worker's own word."""

from __future__ import annotations

import json
import time
import uuid

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.operations.conftest import WAIT_S, reply_of
from tests.operations.handlers import SlowHandler, marked, release
from tests.support.processes import wait_for


def test_a_queued_command_cancelled_is_answered_30013_at_once_and_never_runs_while_the_one_ahead_runs_on(start_ops):
    ops = start_ops()
    first = ops.submit("progress", key="k", seconds=120, steps=120)
    assert ops.started(first)
    second = ops.submit("progress", key="k", seconds=1, steps=1)
    ops.wait_for_state(second.msg_id, "queued")

    canceller = str(uuid.uuid4())
    cancel = ops.call("SystemHandler", "cancel", {"msg_id": second.msg_id}, msg_id=canceller)
    assert cancel.code == 0 and cancel.data["state"] == "dropped", cancel
    dropped = reply_of(second)
    assert dropped.code == Code.CANCELLED and dropped.msg == "操作已取消"
    assert "never started" in dropped.data["detail"] and canceller in dropped.data["detail"]
    assert not marked(ops.effects, second.msg_id, "started")
    assert ops.operation(first.msg_id)["state"] == "running" and ops.operation(second.msg_id) is None
    assert ops.system("result", msg_id=second.msg_id).code == Code.CANCELLED  # its answer is kept like any other

    # the one ahead is cancellable: told to stop, it stops between two steps and answers 30013 itself
    stopping = ops.system("cancel", msg_id=first.msg_id)
    assert stopping.code == 0 and stopping.data["state"] == "cancelling"
    stopped = reply_of(first)
    assert stopped.code == Code.CANCELLED and "stopped in step" in stopped.data["detail"]
    assert marked(ops.effects, first.msg_id, "cancelled") and not marked(ops.effects, first.msg_id, "finished")
    after = ops.submit("progress", key="k", seconds=0, steps=1)  # queued behind the dropped one, had it stayed
    assert reply_of(after).code == 0
    assert not marked(ops.effects, second.msg_id, "started"), "the dropped command ran after all"

    recent = ops.system("operations", state="recent").data["operations"]
    assert [(op["msg_id"], op["code"]) for op in recent] == [
        (after.msg_id, 0),
        (first.msg_id, Code.CANCELLED),
        (second.msg_id, Code.CANCELLED),
    ], "cancel, operations and result run inline: they are not operations"
    assert recent[2]["started_at"] is None and recent[1]["started_at"] is not None


def test_operations_and_result_follow_a_command_from_queued_to_running_with_its_progress_to_its_reply(start_ops):
    ops = start_ops()
    first = ops.submit("progress", key="k", seconds=4, steps=4)
    second = ops.submit("progress", key="k", seconds=0.2, steps=2)
    ops.wait_for_state(second.msg_id, "queued")

    waiting = ops.system("result", msg_id=second.msg_id)
    assert waiting.code == Code.UNKNOWN_OUTCOME and waiting.data["state"] == "queued"
    assert waiting.data["started_at"] is None and waiting.data["queued_at"] <= time.time()

    def in_step_two() -> bool:
        return ops.system("result", msg_id=first.msg_id).data.get("phase") == "step 2 of 4"

    assert wait_for(in_step_two, WAIT_S, interval=0.1)
    running = ops.system("result", msg_id=first.msg_id).data
    assert running["state"] == "running" and running["progress"] == 25.0 and running["cancellable"] is True
    assert running["started_at"] >= running["queued_at"]

    now = ops.system("operations").data
    assert [(op["msg_id"], op["state"]) for op in now["operations"]] == [
        (first.msg_id, "running"),
        (second.msg_id, "queued"),
    ]
    listed = now["operations"][0]
    assert (listed["handler"], listed["command"], listed["resource"]) == ("SlowHandler", "progress", "slow:k")
    assert (listed["progress"], listed["phase"]) == (25.0, "step 2 of 4")

    assert reply_of(first).data == {"steps": 4} and reply_of(second).data == {"steps": 2}
    assert ops.system("result", msg_id=first.msg_id).data == {"steps": 4}
    assert ops.system("operations").data["count"] == 0


def test_a_running_command_that_cannot_be_cancelled_is_30004_and_a_msg_id_not_queued_or_running_is_30006(start_ops):
    ops = start_ops()
    hold = ops.submit("hold", key="k", seconds=120)
    assert ops.started(hold)

    refused = ops.system("cancel", msg_id=hold.msg_id)
    assert refused.code == 30004 and refused.data["field"] == "msg_id"
    assert "cannot be cancelled" in refused.data["detail"]
    release(ops.effects, "k")
    assert reply_of(hold).code == 0 and marked(ops.effects, hold.msg_id, "finished")

    unknown = ops.system("cancel", msg_id=str(uuid.uuid4()))
    assert unknown.code == 30006 and "does not know it" in unknown.data["detail"]
    late = ops.system("cancel", msg_id=hold.msg_id)
    assert late.code == 30006 and "answered already (code 0)" in late.data["detail"]
    assert ops.system("cancel", msg_id="not-a-uuid").code == 30006


def test_cancel_and_operations_answer_while_every_pool_thread_is_busy_and_drop_a_command_waiting_for_one(start_ops):
    ops = start_ops(workers=2)
    holds = [ops.submit("hold", key=key, seconds=120) for key in ("a", "b")]
    assert all(ops.started(hold) for hold in holds)
    waiting = ops.submit("progress", key="c", seconds=1, steps=1)  # its resource is free; no thread is
    ops.wait_for_state(waiting.msg_id, "queued")

    started = time.monotonic()
    listed = ops.system("operations").data["operations"]
    cancel = ops.system("cancel", msg_id=waiting.msg_id)
    answered_in = time.monotonic() - started
    assert sorted(op["state"] for op in listed) == ["queued", "running", "running"]
    assert cancel.code == 0 and cancel.data["state"] == "dropped"
    assert answered_in < 20, f"cancel took {answered_in:.1f} s while the pool was busy (the holds last 120 s)"
    assert reply_of(waiting).code == Code.CANCELLED
    assert all(not hold.future.done() for hold in holds), "the busy threads were not busy after all"

    release(ops.effects, "a")
    release(ops.effects, "b")
    assert [reply_of(hold).code for hold in holds] == [0, 0]
    after = ops.submit("progress", key="c", seconds=0, steps=1)  # behind the dropped one, had it stayed
    assert reply_of(after).code == 0
    assert not marked(ops.effects, waiting.msg_id, "started"), "the dropped command ran once a thread was free"


def test_a_dry_run_cancel_says_what_it_would_do_and_changes_nothing(start_ops):
    ops = start_ops()
    first = ops.submit("progress", key="k", seconds=60, steps=60)
    assert ops.started(first)
    second = ops.submit("progress", key="k", seconds=0.1, steps=1)
    ops.wait_for_state(second.msg_id, "queued")

    planned = ops.call("SystemHandler", "cancel", {"msg_id": second.msg_id}, dry_run=True)
    assert planned.code == 0 and planned.data["dry_run"] is True
    assert planned.data["plan"] == [
        f"drop SlowHandler.progress ({second.msg_id}, queued) before it starts; it is answered 30013"
    ]
    assert ops.operation(second.msg_id)["state"] == "queued"
    assert ops.system("cancel", msg_id=first.msg_id).data["state"] == "cancelling"
    assert reply_of(first).code == Code.CANCELLED
    assert reply_of(second).data == {"steps": 1}, "the dry run dropped it"


def test_progress_is_published_as_operation_progress_and_a_command_longer_than_2_s_ends_with_operation_done(
    start_ops, follow
):
    ops = start_ops()
    follower = follow(ops.client, host=ops.host, source="operation")
    quick = ops.submit("progress", key="q", seconds=0.2, steps=2)
    assert reply_of(quick).code == 0
    long = ops.submit("progress", key="k", seconds=2.5, steps=5)
    assert reply_of(long).code == 0
    cancelled = ops.submit("progress", key="k", seconds=60, steps=30)

    def past_2_s() -> bool:  # step 3 of 30 begins 4 s in: past 2 s of running
        return (ops.operation(cancelled.msg_id) or {}).get("phase") == "step 3 of 30"

    assert wait_for(past_2_s, WAIT_S, interval=0.2)
    assert ops.system("cancel", msg_id=cancelled.msg_id).data["state"] == "cancelling"
    assert reply_of(cancelled).code == Code.CANCELLED

    def done_of(msg_id: str) -> list:
        return [e for e in follower.events if e.kind == "done" and e.msg_id == msg_id]

    assert follower.wait_for(lambda f: done_of(cancelled.msg_id)), [e.kind for e in follower.events]
    progress = [e for e in follower.events if e.kind == "progress" and e.msg_id == long.msg_id]
    assert [(e.state, e.data["progress"], e.data["phase"]) for e in progress] == [
        ("running", 0.0, "step 1 of 5"),
        ("running", 20.0, "step 2 of 5"),
        ("running", 40.0, "step 3 of 5"),
        ("running", 60.0, "step 4 of 5"),
        ("running", 80.0, "step 5 of 5"),
        ("running", 100.0, "finished"),
    ]
    assert all(e.subject == long.msg_id and e.data["command"] == "progress" for e in progress)
    [done] = done_of(long.msg_id)
    assert (done.state, done.data["code"], done.subject) == ("done", 0, long.msg_id)
    assert done.data["duration_s"] > 2 and done.seq > progress[-1].seq
    [stopped] = done_of(cancelled.msg_id)
    assert (stopped.state, stopped.data["code"]) == ("cancelled", Code.CANCELLED)
    assert done_of(quick.msg_id) == [], "a command of 0.2 s published operation.done"
    assert [e.kind for e in follower.events if e.msg_id == quick.msg_id] == ["progress"] * 3


def test_operations_keeps_the_last_100_answered_newest_first(tmp_path):
    """In process, through ``Pipeline.handle`` (the same path, without a broker: 105 commands in a blink)."""
    settings = Settings(host=unique("kvt-ops-"), state_dir=tmp_path / "state")
    assembly = assemble(settings, extra_handlers=[SlowHandler(tmp_path)])
    try:
        sent = [str(uuid.uuid4()) for _ in range(105)]
        for msg_id in sent:
            assert handle(assembly, "SlowHandler", "progress", {"seconds": 0, "steps": 1}, msg_id).code == 0
        recent = handle(assembly, "SystemHandler", "operations", {"state": "recent"}).data
    finally:
        assembly.close()
    assert recent["count"] == 100
    assert [op["msg_id"] for op in recent["operations"]] == sent[:4:-1]
    assert {(op["state"], op["code"], op["progress"], op["phase"]) for op in recent["operations"]} == {
        ("answered", 0, 100.0, "finished")
    }


def handle(assembly, handler: str, command: str, data: dict, msg_id: str | None = None):
    body = {"handler": handler, "command": command, "data": data, "msg_id": msg_id or str(uuid.uuid4())}
    return assembly.pipeline.handle(Delivery(body=json.dumps(body).encode(), content_type="application/json"))
