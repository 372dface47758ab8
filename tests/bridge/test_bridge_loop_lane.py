"""Over plain AMQP the bridge forwards on its event loop's own connection (``LoopLane``): real RabbitMQ, a real
worker, uvicorn on a loopback port; the connection closed under it with ``rabbitmqctl``, a queue that refuses."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import subprocess
import time
from types import SimpleNamespace

import httpx
import pytest
from kombu import Connection, Queue

from kvmworker.bridge.app import create_app
from kvmworker.bridge.auth import LocalToken
from kvmworker.bridge.server import BridgeServer
from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.protocol.wire import host_queue_name
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.bridge.conftest import serving
from tests.conftest import BROKERS, require_broker, unique

pytestmark = pytest.mark.broker
AMQP_ONLY = pytest.mark.parametrize("broker_url", ["amqp"], indirect=True)
ECHO = {"handler": "ProbeHandler", "command": "echo", "data": {"text": "x"}}
CONNECTED = re.compile(r"bridge forwarding over \S+ from (\S+)")


@AMQP_ONLY
def test_over_amqp_the_bridge_publishes_on_its_own_connection_and_the_client_s_publisher_sends_nothing(
    bridge_settings, running_worker
):
    token = "t" * 43
    with Client(bridge_settings.broker_url, declare_host_queues=False) as client:
        app = create_app(bridge_settings, client, local=LocalToken(token, "(test)"))
        server = BridgeServer(app, "127.0.0.1", 0)
        server.start()
        try:
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
                replies = [
                    http.post(server.url + "/", json={**ECHO, "data": {"text": f"n{i}"}}).json() for i in range(20)
                ]
        finally:
            server.stop()
            app.state.bridge.close()
        assert [r["data"]["text"] for r in replies] == [f"n{i}" for i in range(20)]
        assert {r["code"] for r in replies} == {0}
        assert client.publisher.counts.sent == 0


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _lane_addresses(caplog) -> list[str]:
    return [found.group(1) for r in caplog.records if (found := CONNECTED.search(r.getMessage()))]


@AMQP_ONLY
def test_the_broker_closing_the_bridge_s_connection_mid_load_leaves_every_post_a_definite_answer_and_it_reconnects(
    bridge, caplog
):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: the test cannot close one connection of the shared broker")
    caplog.set_level(logging.DEBUG, logger="kvmworker.bridge")
    assert bridge.call(**{k: ECHO[k] for k in ("handler", "command")}, data={"text": "first"})["code"] == 0
    (address,) = _lane_addresses(caplog)
    name = f"{address} -> 127.0.0.1:5672"  # this test's bridge's own connection, nobody else's
    listed = _rabbitmqctl("list_connections", "pid", "name", "--no-table-headers").splitlines()
    (pid,) = [line.split("\t")[0] for line in listed if line.split("\t")[1:] == [name]]

    async def load_and_close() -> list[tuple[str, dict]]:
        """Eight callers POST one after the other until the connection is closed, then five more each."""
        answers: list[tuple[str, dict]] = []
        closing = asyncio.ensure_future(
            asyncio.to_thread(_rabbitmqctl, "close_connection", pid, "kvt: closed under the bridge")
        )

        async def caller(http: httpx.AsyncClient, k: int) -> None:
            after = 0
            for i in itertools.count():
                text = f"{k}-{i}"
                response = await http.post(bridge.url + "/", json={**ECHO, "timeout": 3, "data": {"text": text}})
                answers.append((text, response.json()))
                after += closing.done()
                if after > 5:
                    return

        async with httpx.AsyncClient(timeout=60, headers=bridge.http.headers) as http:
            await asyncio.gather(*(caller(http, k) for k in range(8)))
        await closing
        return answers

    answers = asyncio.run(load_and_close())
    assert {a["code"] for _, a in answers} <= {0, -1}, answers
    assert all(a["data"]["text"] == text for text, a in answers if a["code"] == 0)
    last = {text.split("-")[0]: a["code"] for text, a in answers}
    assert set(last.values()) == {0}, "a caller's POSTs after the reconnect were not all answered"
    for _ in range(100):  # the close may come after the last POST was answered: the reconnect follows it
        if len(_lane_addresses(caplog)) > 1:
            break
        time.sleep(0.1)
    assert any("lost its broker connection" in r.getMessage() for r in caplog.records)
    assert len(_lane_addresses(caplog)) == 2 and _lane_addresses(caplog)[1] != address
    assert bridge.call(**{k: ECHO[k] for k in ("handler", "command")}, data={"text": "after"})["data"]["text"] == (
        "after"
    )


def test_a_command_the_broker_keeps_refusing_is_sent_again_until_its_deadline_then_answered_minus_one(tmp_path, caplog):
    """A queue full at length 0 that rejects publishes: RabbitMQ nacks each one, as while a quorum queue elects."""
    url = require_broker("amqp", BROKERS["amqp"])
    host = unique("kvt-refusing-")
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
    with Connection(url) as conn:
        Queue(host_queue_name(host), durable=True, queue_arguments=arguments).bind(conn.default_channel).declare()
    caplog.set_level(logging.INFO, logger="kvmworker.bridge")
    settings = Settings(host=host, default_host=host, broker_url=url, state_dir=tmp_path, timeout=10.0)
    try:
        with serving(settings) as bridge:
            reply = bridge.post({**ECHO, "timeout": 1.5}).json()
            nacks = sum("nacked the publish" in r.getMessage() for r in caplog.records)
            time.sleep(1.0)
            nacks_later = sum("nacked the publish" in r.getMessage() for r in caplog.records)
    finally:
        delete_host_queue(url, host)
    assert reply["code"] == -1
    assert reply["data"]["detail"].startswith("the broker did not confirm the command within 1.5 s"), reply
    assert nacks >= 2, "the refused command was not sent again"
    assert nacks_later == nacks, "the command was still being sent after its caller had its answer"


def test_a_command_the_broker_confirmed_but_nobody_answers_is_answered_minus_one_saying_no_reply_came(tmp_path):
    """The host's queue exists and takes the command (the broker acks it); no worker reads it."""
    url = require_broker("amqp", BROKERS["amqp"])
    host = unique("kvt-silent-")
    with Connection(url) as conn:
        Queue(host_queue_name(host), durable=True).bind(conn.default_channel).declare()
    settings = Settings(host=host, default_host=host, broker_url=url, state_dir=tmp_path, timeout=10.0)
    try:
        with serving(settings) as bridge:
            reply = bridge.post({**ECHO, "timeout": 1.0}).json()
    finally:
        delete_host_queue(url, host)
    assert (reply["code"], reply["data"]["detail"]) == (-1, f"no reply from host {host!r} within 1 s")


@pytest.mark.parametrize("size", [10, 200_000], ids=["one body frame", "a body over several frames"])
@pytest.mark.parametrize("extra", [{}, {"x-kvt-count": 3, "x-kvt-nested": {"a": [1, "b"]}}], ids=["str+float", "any"])
def test_the_lane_s_command_frames_are_byte_for_byte_what_py_amqp_writes_for_the_same_message(size, extra):
    from amqp.basic_message import Message
    from amqp.serialization import dumps

    from kvmworker.bridge.looplane import BASIC_PUBLISH, PublishFrames
    from tests.support.py_amqp import py_amqp_frames

    body = b'{"command":"ping","data":{"text":"' + b"x" * size + b'"}}'
    headers = {"x-kvm-host": "kvm01", "x-kvm-issued-at": 1796062460.227884, "x-kvm-signature": "ed25519:k1:AAAA"}
    headers |= extra
    message = Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=headers,
        delivery_mode=2,
        correlation_id="c0ffee1",
        reply_to="kvmworker.reply.abc",
        message_id="m-1",
    )
    args = dumps("Bssbb", (0, "", "kvmworker.kvm01", False, False))
    ours = PublishFrames(7, 131072, "kvmworker.reply.abc", 2).frames("kvmworker.kvm01", body, headers, "c0ffee1", "m-1")
    assert ours == py_amqp_frames(7, BASIC_PUBLISH, args, message, frame_max=131072)


def test_a_command_that_cannot_be_encoded_is_answered_at_once_and_the_next_one_s_confirm_still_settles_it():
    """A routing key over AMQP's 255 bytes (a valid envelope never makes one): no frame leaves and no delivery
    tag is taken, so the broker's next confirm settles the next command, not the one before it."""
    from kvmworker.bridge.looplane import LoopLane
    from kvmworker.protocol.envelope import Envelope

    url = require_broker("amqp", BROKERS["amqp"])
    host = unique("kvt-encode-")
    with Connection(url) as conn:
        Queue(host_queue_name(host), durable=True).bind(conn.default_channel).declare()

    async def scenario() -> tuple[dict, str]:
        lane = LoopLane(url)
        try:
            ping = Envelope(handler="SystemHandler", command="ping", data={}, timeout=5)
            bad = lane.submit("x" * 300, ping.ensure_msg_id(), 5)
            good = lane.submit(host, ping.ensure_msg_id(), 5)
            reply = await asyncio.wait_for(bad.future, 10)
            for _ in range(100):
                if good.stage == "confirmed":
                    break
                await asyncio.sleep(0.05)
            return reply.model_dump(), good.stage
        finally:
            lane.close()

    try:
        reply, stage = asyncio.run(scenario())
    finally:
        delete_host_queue(url, host)
    assert reply["code"] == Code.INTERNAL_ERROR and "could not be encoded" in reply["data"]["detail"], reply
    assert stage == "confirmed"


def test_the_lane_forwards_again_when_its_app_is_served_on_a_new_event_loop():
    """The first loop ends with its connection still open (and its exclusive reply queue locked to it)."""
    from kvmworker.bridge.looplane import LoopLane
    from kvmworker.protocol.envelope import Envelope

    url = require_broker("amqp", BROKERS["amqp"])
    host = unique("kvt-twoloops-")
    with Connection(url) as conn:
        Queue(host_queue_name(host), durable=True).bind(conn.default_channel).declare()
    lane = LoopLane(url)

    async def confirmed() -> str:
        call = lane.submit(host, Envelope(handler="SystemHandler", command="ping", data={}).ensure_msg_id(), 5)
        for _ in range(200):  # generous: well under a second when the machine is quiet
            if call.stage == "confirmed":
                break
            await asyncio.sleep(0.05)
        return call.stage

    try:
        stages = [asyncio.run(confirmed()), asyncio.run(confirmed())]
    finally:
        lane.close()
        delete_host_queue(url, host)
    assert stages == ["confirmed", "confirmed"]


def test_with_the_broker_away_a_post_never_sent_waits_out_its_whole_deadline_and_says_it_was_not_sent(tmp_path):
    """Nothing listens on port 1: rounds of reconnecting fail for longer than the publisher's retries last (about
    2 s); a command never sent is not charged for them, as the client parks it until its deadline."""
    host = unique("kvt-nobroker-")
    settings = Settings(
        host=host, default_host=host, broker_url="amqp://guest:guest@127.0.0.1:1//", state_dir=tmp_path, timeout=10.0
    )
    with serving(settings) as bridge:
        reply = bridge.post({**ECHO, "timeout": 4}).json()
    assert (reply["code"], reply["data"]["detail"]) == (
        -1,
        "the broker could not be reached within 4 s: the command was not sent",
    )


@pytest.mark.parametrize(
    ("url", "on_the_loop"),
    [
        ("amqp://guest:guest@h1//", True),
        ("amqp://h1//;amqp://h2//", True),
        ("amqps://h1//", False),
        ("amqp://h1//;amqps://h2//", False),
        ("amqp://h1//?ssl=1", False),
        ("redis://localhost:6379/0", False),
        ("memory://", False),
    ],
)
def test_only_plain_amqp_on_every_failover_url_is_forwarded_on_the_event_loop_tls_and_others_through_the_client(
    url, on_the_loop
):
    from kvmworker.bridge.looplane import usable

    assert usable(url) is on_the_loop


def test_a_reply_split_over_frames_and_reads_with_heartbeats_between_is_read_whole_as_py_amqp_wrote_it():
    """The broker's bytes as py-amqp writes a delivery (a body over several frames of a small frame_max), with a
    heartbeat and a channel-0 method among them, fed to the lane's connection a few bytes at a time."""
    from amqp.basic_message import Message
    from amqp.method_framing import frame_writer
    from amqp.serialization import dumps

    from kvmworker.bridge.looplane import BASIC_DELIVER, HEARTBEAT_FRAME, LoopLane, _AmqpProtocol, method_frame
    from kvmworker.protocol.envelope import Envelope

    text = "你好" * 3000  # 18 kB of UTF-8: five body frames of 4 kB

    async def scenario() -> dict:
        lane = LoopLane("amqp://guest:guest@127.0.0.1:1//")  # nothing listens: the call waits, parked
        try:
            call = lane.submit(
                "kvt-frames", Envelope(handler="SystemHandler", command="ping", data={}).ensure_msg_id(), 30
            )
            written: list[bytes] = []
            write_frame = frame_writer(
                SimpleNamespace(frame_max=4096, bytes_sent=0), SimpleNamespace(write=lambda d: written.append(bytes(d)))
            )
            body = json.dumps({"code": 0, "msg": "成功", "data": {"text": text}}, ensure_ascii=False).encode()
            reply = Message(body, correlation_id=call.correlation_id, message_id=call.msg_id)
            args = dumps("sLbss", ("ctag", 1, False, "", lane.reply_queue))
            write_frame(1, 1, BASIC_DELIVER, args, reply)
            assert len(written) > 4, "py-amqp wrote the delivery in one piece: no frame boundary to put others at"
            blocked = method_frame(0, (10, 60), dumps("s", ("kvt",)))  # connection.blocked, on channel 0
            stream = b"".join([*written[:3], HEARTBEAT_FRAME, blocked, *written[3:]])  # after the first body frame
            opened = {"channel": 1, "frame_max": 4096, "heartbeat": 0, "leftover": b"", "uri": ""}
            protocol = _AmqpProtocol(lane, opened)
            for start in range(0, len(stream), 1000):
                protocol.data_received(stream[start : start + 1000])
            answered = await asyncio.wait_for(call.future, 5)
            assert protocol.blocked
            return answered.model_dump()
        finally:
            lane.close()

    assert asyncio.run(scenario())["data"] == {"text": text}
