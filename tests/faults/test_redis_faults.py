"""Faults on a private Redis: a visibility timeout shorter than a command, and a restart between commands.

kombu's Redis transport hands an unacked message out again once ``visibility_timeout`` has passed, even while
the first delivery still runs: the journal must keep it from running twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import time
import uuid
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


def test_a_message_is_recorded_by_redis_as_it_is_popped_even_for_a_worker_frozen_in_its_wait(redis, worker):
    """The pop and kombu's record are one step in Redis (the worker's TAKE script, queued behind its BLMOVE):
    a worker that never runs again after the pop (frozen, then killed) still has the message come back, once."""
    with Client(redis.url) as client:
        # the reply goes out in the same write as the worker's next wait: once it is read, that wait is in Redis
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
        frozen = worker.current
        frozen.send_signal(signal.SIGSTOP)
        try:
            pending = client.submit(
                worker.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "frozen"}}, timeout=60
            )
            assert wait_for(lambda: len(_unacked_records(redis, pending.msg_id)) == 1, 10), (
                "Redis popped the message for a frozen worker without kombu's record of it"
            )
            assert _queued(redis, worker.host) == 0, "the message is still in the queue: nothing was popped"
        finally:
            worker.kill(frozen)  # SIGKILL: it never read what Redis popped for it
        assert count_of(worker.effects, "frozen") == 0
        worker.start()
        assert client.wait(pending, 40).code == Code.OK, worker.log()
        time.sleep(VISIBILITY_S * 2)  # a second copy would have been handed out by now
    assert count_of(worker.effects, "frozen") == 1, "the message came back more than once"
    assert _unacked_records(redis, pending.msg_id) == []


def _queued(redis: PrivateRedis, host: str) -> int:
    """Messages in a host queue's lists (kombu's keys, each priority's)."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as db:
        return sum(db.llen(key) for key in db.keys(f"{host_queue_name(host)}*") if db.type(key) == b"list")


def test_a_kombu_orchestrators_message_with_a_priority_is_taken_and_answered(redis, worker):
    """kombu's Redis transport keeps each priority in a list of its own: the worker takes from all of them (the
    one it waits on is the default priority's; the others are looked at each time it takes, at the latest when
    its wait times out: within a second)."""
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    with Client(redis.url) as client:  # the worker is up and consuming
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
    replies: dict[str, dict] = {}
    with Connection(redis.url) as conn:
        channel = conn.channel()
        reply_queue = Queue("kvt.prio." + worker.host, auto_delete=True)
        consumer = Consumer(channel, [reply_queue], no_ack=True)
        consumer.register_callback(lambda body, message: replies.update({message.properties["correlation_id"]: body}))
        consumer.consume()
        producer = Producer(conn.channel())
        queue = host_queue_name(worker.host)
        assert channel._q_for_pri(queue, 5) != queue != channel._q_for_pri(queue, 9), "one list for all priorities"
        sent = []
        for priority in (0, 5, 9):
            msg_id = str(uuid.uuid4())
            body = {
                "handler": "ProbeHandler",
                "command": "count",
                "data": {"name": f"prio{priority}"},
                "msg_id": msg_id,
            }
            producer.publish(
                json.dumps(body),
                exchange=Exchange("kvmworker", "direct", durable=True),
                routing_key=worker.host,
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=msg_id,
                message_id=msg_id,
                reply_to=reply_queue.name,
                priority=priority,
            )
            sent.append(msg_id)
        deadline = time.monotonic() + 30
        while len(replies) < len(sent) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
    assert sorted(replies) == sorted(sent), worker.log()
    codes = [(r if isinstance(r, dict) else json.loads(r))["code"] for r in replies.values()]
    assert codes == [Code.OK] * len(sent), (replies, worker.log())
    assert [count_of(worker.effects, f"prio{p}") for p in (0, 5, 9)] == [1, 1, 1]
    assert all(_unacked_records(redis, msg_id) == [] for msg_id in sent)


def test_a_worker_whose_redis_user_may_not_run_scripts_takes_with_brpop_and_still_records_each_delivery(
    redis, tmp_path
):
    """Without scripts (an ACL that refuses them; Redis < 6.2 has no BLMOVE): the worker takes with BRPOP and
    writes kombu's record itself, before the command runs."""
    user, password = "kvtnoscript", "kvt-pw"
    acl = ["redis-cli", "-p", str(redis.port)]
    subprocess.run([*acl, "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-@scripting"], check=True)
    w = WorkerProcess(
        f"redis://{user}:{password}@127.0.0.1:{redis.port}/0",
        tmp_path,
        env={"KVMWORKER_REDIS_VISIBILITY_TIMEOUT": str(VISIBILITY_S)},
    )
    try:
        w.start()
        with Client(redis.url) as client:
            running = client.submit(
                w.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "brpop", "sleep": 1}}
            )
            assert wait_for(lambda: count_of(w.effects, "brpop") == 1, 15), w.log()
            assert len(_unacked_records(redis, running.msg_id)) == 1, "the running command has no record"
            assert client.wait(running, 30).code == Code.OK, w.log()
            assert _unacked_records(redis, running.msg_id) == []
        assert "takes messages with BRPOP" in w.log()
    finally:
        w.stop_all()
        subprocess.run([*acl, "ACL", "DELUSER", user], check=True)


def _script_calls(redis: PrivateRedis) -> int:
    """How many EVALSHA Redis has run since its statistics were reset (the worker's takes among them)."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as db:
        return int(db.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_backlog_is_taken_several_messages_a_round_trip_each_recorded_and_run_once(redis, worker):
    stop_process(worker.current)
    names = [f"backlog{i}" for i in range(48)]
    with Client(redis.url) as client:
        pending = [
            client.submit(
                worker.host, {"handler": "ProbeHandler", "command": "count", "data": {"name": name}}, timeout=60
            )
            for name in names
        ]
        assert wait_for(lambda: _queued(redis, worker.host) == len(names), 10)
        subprocess.run(["redis-cli", "-p", str(redis.port), "CONFIG", "RESETSTAT"], check=True, capture_output=True)
        worker.start()
        replies = [client.wait(p, 60) for p in pending]
        takes = _script_calls(redis)
    assert [r.code for r in replies] == [Code.OK] * len(names), worker.log()
    assert [count_of(worker.effects, name) for name in names] == [1] * len(names)
    assert all(_unacked_records(redis, p.msg_id) == [] for p in pending)
    assert takes <= len(names) // 2, f"{takes} scripts run for a backlog of {len(names)}: one take a message"
    print(f"\nbacklog of {len(names)}: {takes} scripts run")


def test_a_worker_killed_holding_a_batch_it_took_has_each_message_back_and_none_runs_twice(redis, worker):
    """The messages one take brought in are recorded together: killed while they run or wait in the worker,
    each comes back after the visibility timeout and is answered once (run on the next worker, or, if it had
    started, answered from the journal as interrupted)."""
    stop_process(worker.current)
    names = [f"held{i}" for i in range(28)]  # more than the pool runs at once (16), within the prefetch (32)
    with Client(redis.url) as client:
        pending = [
            client.submit(
                worker.host,
                {"handler": "ProbeHandler", "command": "count", "data": {"name": name, "sleep": 2}},
                timeout=90,
            )
            for name in names
        ]
        assert wait_for(lambda: _queued(redis, worker.host) == len(names), 10)
        worker.start()
        assert wait_for(lambda: any(count_of(worker.effects, name) for name in names), 15), worker.log()
        assert wait_for(lambda: _queued(redis, worker.host) == 0, 5), "the worker did not take the backlog"
        worker.kill()
        started = [name for name in names if count_of(worker.effects, name)]
        worker.start()
        replies = [client.wait(p, 60) for p in pending]
    assert started != names, "every command had started before the kill: none came back to run"
    for name, reply in zip(names, replies, strict=True):
        if name in started:
            state = (reply.data or {}).get("state")
            assert (reply.code, state) == (Code.UNKNOWN_OUTCOME, "interrupted"), (name, reply)
        else:
            assert reply.code == Code.OK, (name, reply, worker.log())
        assert count_of(worker.effects, name) == 1, f"{name} ran {count_of(worker.effects, name)} times"
    assert all(_unacked_records(redis, p.msg_id) == [] for p in pending)


def test_a_message_that_is_not_kombus_is_dropped_with_its_record_and_the_worker_serves_on(redis, worker):
    """The take records whatever it pops; what the worker then cannot read as kombu's message is logged and
    dropped, its record with it (restored, it would come back every visibility timeout)."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as db:
        db.lpush(host_queue_name(worker.host), b"kvt: not kombu's JSON")
    with Client(redis.url) as client:
        assert wait_for(lambda: "that is not kombu's was dropped" in worker.log(), 15), worker.log()
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
        with redis_py.Redis.from_url(redis.url) as db:
            records = db.hvals("unacked")
        assert not [r for r in records if b"not kombu's JSON" in r], "the dropped message's record is left"
        time.sleep(VISIBILITY_S * 2)  # a record left would have brought it back by now
    assert worker.log().count("that is not kombu's was dropped") == 1, worker.log()


def test_calls_are_written_inline_again_once_redis_has_dropped_every_connection_of_the_client_and_the_worker(
    redis, worker
):
    """The caller's LPUSH goes out on a connection of the channel's pool kept for it: one Redis dropped is
    connected again (the first call after may go by the publishing thread), and calls are inline again after."""
    import redis as redis_py

    with Client(redis.url) as client:
        for _ in range(2):  # the first declares the queue: the publishing thread's; the second inline
            assert client.call(worker.host, "ProbeHandler", "count", {"name": "before"}, timeout=10).code == Code.OK
        assert client.publisher.counts.inline >= 1, client.publisher.counts
        with redis_py.Redis.from_url(redis.url) as db:
            assert db.execute_command("CLIENT", "KILL", "TYPE", "normal") >= 2  # every one but this
        assert wait_for(
            lambda: client.call(worker.host, "ProbeHandler", "count", {"name": "after"}, timeout=5).code == Code.OK,
            45,
            interval=0.5,
        ), worker.log()
        inline = client.publisher.counts.inline
        for _ in range(5):
            assert client.call(worker.host, "ProbeHandler", "count", {"name": "again"}, timeout=10).code == Code.OK
        assert client.publisher.counts.inline == inline + 5, client.publisher.counts
    assert count_of(worker.effects, "before") == 2
    assert count_of(worker.effects, "again") == 5


def test_a_client_whose_redis_user_may_not_pop_many_at_once_still_gets_every_reply(redis, worker, caplog):
    """The client's consumer thread takes the replies waiting with an RPOP of many in front of its BRPOP; a
    Redis that refuses it (an ACL without RPOP; Redis < 6.2 has no count) leaves it to the BRPOP, one at a time:
    many calls in flight are each answered."""
    user, password = "kvtnorpop", "kvt-pw"
    acl = ["redis-cli", "-p", str(redis.port)]
    subprocess.run([*acl, "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-rpop"], check=True)
    try:
        url = f"redis://{user}:{password}@127.0.0.1:{redis.port}/0"
        with caplog.at_level(logging.INFO, "kvmworker.client"), Client(url) as client:
            calls = [
                client.submit(worker.host, {"handler": "SystemHandler", "command": "ping", "data": {}})
                for _ in range(30)
            ]
            assert [client.wait(pending, 30).code for pending in calls] == [Code.OK] * 30, worker.log()
        assert any("takes replies one at a time" in record.getMessage() for record in caplog.records)
    finally:
        subprocess.run([*acl, "ACL", "DELUSER", user], check=True)


def test_a_worker_whose_take_script_redis_flushed_takes_up_again_and_runs_each_command_once(redis, worker):
    """``SCRIPT FLUSH`` under a waiting worker: its take (``EVALSHA``) is refused (NOSCRIPT) when the next command
    comes; the worker starts its session again (the script loaded anew) and the command, never popped, is taken
    then: answered, run once, as are those after it."""
    with Client(redis.url) as client:
        assert client.call(worker.host, "ProbeHandler", "count", {"name": "before"}, timeout=10).code == Code.OK
        subprocess.run(["redis-cli", "-p", str(redis.port), "SCRIPT", "FLUSH"], check=True)
        for i in range(3):
            reply = client.call(worker.host, "ProbeHandler", "count", {"name": f"after{i}"}, timeout=30)
            assert reply.code == Code.OK, worker.log()
    assert [count_of(worker.effects, name) for name in ("before", "after0", "after1", "after2")] == [1, 1, 1, 1]
    assert "NOSCRIPT" in worker.log()
