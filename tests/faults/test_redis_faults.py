"""Faults on a private Redis: a visibility timeout shorter than a command, and a restart between commands.

kombu's Redis transport hands an unacked message out again once ``visibility_timeout`` has passed, even while
the first delivery still runs: the journal must keep it from running twice.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.protocol.wire import host_queue_name
from tests.faults.brokers import PrivateRedis, private_redis, require_private_brokers
from tests.support.handlers import count_of
from tests.support.processes import WorkerProcess, stop_process, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
VISIBILITY_S = 2


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    require_private_brokers()
    with private_redis(6390) as server:
        yield server


@pytest.fixture
def worker(redis, tmp_path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(redis.url, tmp_path, env={"KVMWORKER_REDIS_VISIBILITY_TIMEOUT": str(VISIBILITY_S)})
    w.start()
    yield w
    w.stop_all()


def test_a_command_longer_than_the_visibility_timeout_runs_once_and_is_answered_once(redis, worker):
    data = {"name": "long", "sleep": VISIBILITY_S * 3}
    with Client(redis.url) as client:
        reply = client.call(worker.host, "ProbeHandler", "count", data, timeout=60)
        assert reply.code == Code.OK, (reply, worker.log())
        time.sleep(VISIBILITY_S * 2)  # a restored copy would have been handed out again by now
        assert count_of(worker.effects, "long") == 1, "the command ran again when Redis handed it out again"
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
    assert "(redelivered)" in worker.log(), "Redis never handed the message out again: the fault did not happen"
    print(f"\nvisibility timeout: handed out {worker.log().count('(redelivered)') + 1} times, ran once")


def test_several_long_commands_past_the_visibility_timeout_each_run_once(redis, worker):
    with Client(redis.url) as client:
        pending = [
            client.submit(
                worker.host,
                {
                    "handler": "ProbeHandler",
                    "command": "count",
                    "data": {"name": f"long{i}", "sleep": VISIBILITY_S * 2},
                },
                timeout=60,
            )
            for i in range(6)
        ]
        assert [client.wait(p, 60).code for p in pending] == [0] * 6
        time.sleep(VISIBILITY_S * 2)
    assert [count_of(worker.effects, f"long{i}") for i in range(6)] == [1] * 6


def test_a_redis_restart_between_commands_is_survived_by_worker_and_client(redis, worker):
    with Client(redis.url) as client:
        assert client.call(worker.host, "ProbeHandler", "count", {"name": "before"}, timeout=10).code == 0
        redis.stop()
        redis.start()
        # the worker and the client reconnect by themselves; the first call after may race their reconnect
        assert wait_for(
            lambda: client.call(worker.host, "ProbeHandler", "count", {"name": "after"}, timeout=5).code == 0,
            45,
            interval=0.5,
        ), worker.log()
    assert count_of(worker.effects, "before") == 1
    assert count_of(worker.effects, "after") >= 1


def test_a_command_given_back_at_sigterm_runs_once_on_the_next_worker_and_the_running_one_is_answered(redis, worker):
    """The worker's requeue on Redis (kombu's restore from the unacked record the worker wrote itself)."""
    with Client(redis.url) as client:
        running = client.submit(
            worker.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "first", "sleep": 2}}
        )
        # the same resource as ``running``: it waits behind it, and has not started when the worker stops
        waiting = client.submit(
            worker.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "first"}}, timeout=60
        )
        time.sleep(1)  # both received: the first runs (2 s), the second waits behind it
        stop_process(worker.current)
        assert client.wait(running, 10).code == Code.OK, worker.log()
        assert not waiting.future.done(), "the command that waited was answered by a worker that was stopping"
        assert count_of(worker.effects, "first") == 1
        worker.start()
        assert client.wait(waiting, 30).code == Code.OK, worker.log()
    assert count_of(worker.effects, "first") == 2, "each of the two commands ran once"


def _unacked_records(redis: PrivateRedis, msg_id: object) -> list[list]:
    """kombu's unacked bookkeeping in the private Redis of one message, as kombu's restore reads it: [message,
    exchange, routing key] by delivery tag, the tag in the index too."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as db:
        records = {tag: json.loads(raw) for tag, raw in db.hgetall("unacked").items()}
        indexed = set(db.zrange("unacked_index", 0, -1))
    mine = {tag: r for tag, r in records.items() if r[0]["properties"]["message_id"] == str(msg_id)}
    assert set(mine) <= indexed, "a record that is not in kombu's index is never restored"
    return list(mine.values())


def test_a_running_command_is_in_kombus_unacked_record_until_its_reply_goes_out(redis, worker):
    """The worker reads the queue itself but keeps kombu's bookkeeping: the record kombu's restore reads."""
    with Client(redis.url) as client:
        running = client.submit(
            worker.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "held", "sleep": 1}}
        )
        assert wait_for(lambda: count_of(worker.effects, "held") == 1, 15), worker.log()
        records = _unacked_records(redis, running.msg_id)
        assert len(records) == 1, "the running command has no unacked record kombu could restore it from"
        _, exchange, routing_key = records[0]
        assert (exchange, routing_key) in [("", host_queue_name(worker.host)), ("kvmworker", worker.host)]
        assert client.wait(running, 30).code == Code.OK, worker.log()
        # the reply and the ack go in one transaction: once the reply is read, the record is gone
        assert _unacked_records(redis, running.msg_id) == []


def test_a_worker_killed_during_a_command_has_it_back_after_the_visibility_timeout_and_does_not_run_it_again(
    redis, worker
):
    with Client(redis.url) as client:
        pending = client.submit(
            worker.host,
            {"handler": "ProbeHandler", "command": "count", "data": {"name": "killed", "sleep": 30}},
            timeout=60,
        )
        assert wait_for(lambda: count_of(worker.effects, "killed") == 1, 15), worker.log()
        worker.kill()  # SIGKILL: nothing acked, nothing given back; only Redis's record of the delivery is left
        worker.start()
        reply = client.wait(pending, 40)
        assert reply.code == Code.UNKNOWN_OUTCOME, (reply, worker.log())
        assert reply.data["state"] == "interrupted"
    assert count_of(worker.effects, "killed") == 1, "the command ran again after the kill"


def test_a_worker_stopped_in_a_stream_of_commands_drops_none_each_runs_once_on_it_or_the_next(redis, worker):
    """SIGTERM while commands keep coming: what the worker had not started goes back (kombu's requeue), and
    the one its last BRPOP brought in as it stopped is given back too, not dropped."""
    names = [f"stream{i}" for i in range(300)]
    with Client(redis.url) as client:

        def submit(batch: list[str]) -> list:
            data = [{"handler": "ProbeHandler", "command": "count", "data": {"name": name}} for name in batch]
            return [client.submit(worker.host, envelope, timeout=60) for envelope in data]

        pending = submit(names[:150])
        assert wait_for(lambda: sum(count_of(worker.effects, name) for name in names[:150]) >= 30, 30)
        first = worker.current
        first.send_signal(signal.SIGTERM)
        pending += submit(names[150:])  # published while it stops
        assert first.wait(30) == 0, worker.log()
        worker.start()
        replies = [client.wait(p, 60) for p in pending]
    assert [r.code for r in replies] == [Code.OK] * len(names), worker.log()
    assert [count_of(worker.effects, name) for name in names] == [1] * len(names)
    ran = [(worker.tmp / f"worker{n}.log").read_text().count("ProbeHandler.count") for n in (0, 1)]
    assert all(ran), f"the stop did not fall in the stream: each worker ran {ran}"
    print(f"\nstopped in a stream: {ran} ran on each worker, {worker.log().count('(redelivered)')} given back")
