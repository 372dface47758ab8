"""The same end-to-end suite over memory://, amqp:// (RabbitMQ) and redis:// (Redis)."""

from __future__ import annotations

import threading
import time

from kvmworker.client import PARKED, Client
from kvmworker.protocol.codes import Code


def test_ping_answers_with_the_worker_host_and_version(running_worker, client, host):
    reply = client.call(host, "SystemHandler", "ping", timeout=10)
    assert reply.code == Code.OK and reply.msg == "成功"
    assert reply.data["host"] == host
    assert reply.data["version"]
    assert reply.data["uptime"] >= 0


def test_capabilities_list_every_registered_handler(running_worker, client, host):
    reply = client.call(host, "SystemHandler", "capabilities", timeout=10)
    assert reply.code == Code.OK
    assert "ping" in reply.data["handlers"]["SystemHandler"]
    assert "sleep" in reply.data["handlers"]["ProbeHandler"]


def test_an_unknown_handler_is_answered_20002(running_worker, client, host):
    reply = client.call(host, "NoSuchHandler", "ping", timeout=10)
    assert (reply.code, reply.msg) == (20002, "不支持的处理器")
    assert reply.data["field"] == "handler"


def test_an_unknown_command_is_answered_20003_naming_the_known_ones(running_worker, client, host):
    reply = client.call(host, "SystemHandler", "reboot_everything", timeout=10)
    assert (reply.code, reply.msg) == (20003, "不支持的命令")
    assert "ping" in reply.data["detail"]


def test_invalid_data_is_answered_with_the_offending_field(running_worker, client, host):
    reply = client.call(host, "ProbeHandler", "sleep", {"seconds": -1}, timeout=10)
    assert (reply.code, reply.msg) == (30006, "无效的设备参数值")
    assert reply.data["field"] == "seconds"


def test_dry_run_reaches_the_handler_which_returns_its_plan_instead_of_acting(running_worker, client, host):
    started = time.monotonic()
    reply = client.call(host, "ProbeHandler", "sleep", {"seconds": 30}, dry_run=True, timeout=10)
    assert reply.code == Code.OK
    assert reply.data == {"dry_run": True, "plan": ["sleep 30.0 s"]}
    assert time.monotonic() - started < 10


def test_a_bug_inside_a_handler_is_answered_99999_and_the_worker_keeps_serving(running_worker, client, host):
    reply = client.call(host, "ProbeHandler", "boom", timeout=10)
    assert (reply.code, reply.msg) == (99999, "系统异常,请稍后重试")
    assert client.call(host, "SystemHandler", "ping", timeout=10).code == Code.OK


def test_a_reply_that_cannot_be_serialised_is_answered_99999_not_requeued(running_worker, client, host):
    assert client.call(host, "ProbeHandler", "unserialisable", timeout=10).code == 99999
    assert client.call(host, "SystemHandler", "ping", timeout=10).code == Code.OK


def test_a_slow_command_does_not_delay_a_ping_sent_after_it(running_worker, client, host):
    slow = client.submit(host, {"handler": "ProbeHandler", "command": "sleep", "data": {"seconds": 3}}, timeout=10)
    time.sleep(0.1)
    started = time.monotonic()
    ping = client.call(host, "SystemHandler", "ping", timeout=10)
    assert ping.code == Code.OK
    assert time.monotonic() - started < 1.5
    assert not slow.future.done(), "the slow command should still be running"
    assert client.wait(slow, 10).data == {"slept": 3.0}


def test_a_ping_is_answered_even_when_every_pool_thread_is_busy(running_worker, client, host, worker_settings):
    busy = [
        client.submit(
            host, {"handler": "ProbeHandler", "command": "sleep", "data": {"seconds": 2, "key": f"b{i}"}}, timeout=10
        )
        for i in range(worker_settings.workers + 2)
    ]
    time.sleep(0.2)
    started = time.monotonic()
    assert client.call(host, "SystemHandler", "ping", timeout=10).code == Code.OK
    assert time.monotonic() - started < 1.5
    assert not any(call.future.done() for call in busy)
    assert all(client.wait(call, 15).code == Code.OK for call in busy)


def test_commands_on_the_same_resource_run_one_after_another(running_worker, client, host):
    body = {"handler": "ProbeHandler", "command": "sleep", "data": {"seconds": 0.6, "key": "vm:one"}}
    started = time.monotonic()
    calls = [client.submit(host, body, timeout=10) for _ in range(3)]
    assert all(client.wait(c, 10).code == Code.OK for c in calls)
    assert time.monotonic() - started >= 1.8


def test_commands_on_different_resources_run_side_by_side(running_worker, client, host):
    started = time.monotonic()
    calls = [
        client.submit(
            host, {"handler": "ProbeHandler", "command": "sleep", "data": {"seconds": 1, "key": f"vm:{i}"}}, timeout=10
        )
        for i in range(4)
    ]
    assert all(client.wait(c, 10).code == Code.OK for c in calls)
    assert time.monotonic() - started < 3


def test_many_concurrent_callers_each_get_their_own_reply(running_worker, client, host):
    replies: dict[int, str] = {}

    def caller(i: int) -> None:
        reply = client.call(host, "ProbeHandler", "echo", {"text": f"caller-{i}"}, timeout=15)
        replies[i] = reply.data["text"]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == {i: f"caller-{i}" for i in range(32)}


def test_submit_returns_before_the_broker_is_reached_and_the_call_then_says_it_was_never_sent():
    """Nothing listens on port 1: the command waits (parked) for the reply consumer, and the call says so."""
    with Client("amqp://guest:guest@127.0.0.1:1//") as unreachable:
        ping = {"handler": "SystemHandler", "command": "ping", "data": {}}
        pending = unreachable.submit("kvt-nowhere", ping, timeout=1)
        assert (pending.stage, pending.future.done()) == (PARKED, False), "submit waited for the broker"
        reply = unreachable.wait(pending, 1)
    assert reply.code == Code.UNKNOWN_OUTCOME and reply.data["msg_id"] == pending.msg_id
    assert reply.data["detail"] == "the broker could not be reached within 1 s: the command was not sent"


def test_no_worker_for_a_host_gives_minus_one_with_the_msg_id(client, broker_url):
    reply = client.call("kvt-nobody-home", "SystemHandler", "ping", timeout=0.5)
    assert (reply.code, reply.msg) == (-1, "未知异常")
    assert reply.data["msg_id"]


def test_a_reply_that_beats_a_failed_publish_confirm_is_kept(running_worker, client, host, monkeypatch):
    """The broker took the command and the worker answered, but the publisher's confirm was lost to a
    connection reset (seen in the RabbitMQ restart fault test): the caller gets the worker's reply."""
    real_publish_async = client.publisher.publish_async

    def publish_then_lose_the_confirm(body, *, done, **kwargs):
        def lose_the_confirm() -> None:
            deadline = time.monotonic() + 10
            while kwargs["correlation_id"] in client._pending and time.monotonic() < deadline:
                time.sleep(0.005)
            done(ConnectionResetError(104, "Connection reset by peer"))

        real_publish_async(body, done=lambda exc: threading.Thread(target=lose_the_confirm).start(), **kwargs)

    monkeypatch.setattr(client.publisher, "publish_async", publish_then_lose_the_confirm)
    reply = client.call(host, "ProbeHandler", "echo", {"text": "kept"}, timeout=10)
    assert (reply.code, reply.data["text"]) == (Code.OK, "kept")


def test_a_publish_that_fails_for_good_answers_minus_one_saying_the_broker_did_not_confirm(client, host, monkeypatch):
    """The publisher gave up (retries spent): the call is answered at once, without waiting for its timeout."""

    def publish_and_give_up(body, *, done, **kwargs):
        done(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(client.publisher, "publish_async", publish_and_give_up)
    reply = client.call(host, "SystemHandler", "ping", timeout=30)
    assert reply.code == Code.UNKNOWN_OUTCOME and reply.data["msg_id"]
    # the publisher's verdict, not the caller's timeout ("… did not confirm the command within 30 s")
    assert "did not confirm the command (" in reply.data["detail"] and "Connection refused" in reply.data["detail"]
