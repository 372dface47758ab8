"""Who reads a client's replies (kvmworker/client.py ``_Turns``): a caller waiting alone reads the reply
connection itself; callers that join it, the bridge's ``submit`` and whatever arrives between calls are read by
the consumer thread. Whoever reads, each caller gets its own reply, over every broker."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator

import amqp
import pytest
from kombu import Connection, Consumer, Producer, Queue

from kvmworker.client import Client, _AmqpReplies
from kvmworker.protocol.codes import Code
from kvmworker.protocol.wire import host_queue_name
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, REDIS_URL, require_broker, unique


def test_calls_one_after_another_mixed_with_bursts_of_concurrent_callers_each_get_their_own_reply(
    running_worker, client, host
):
    replies: dict[str, str] = {}
    failures: list[str] = []

    def call(tag: str) -> None:
        reply = client.call(host, "ProbeHandler", "echo", {"text": tag}, timeout=15)
        if reply.code != Code.OK:
            failures.append(f"{tag}: {reply.code} {reply.data}")
            return
        replies[tag] = reply.data["text"]

    expected = []
    for burst in range(6):
        for i in range(10):  # alone: the caller reads its own reply
            expected.append(tag := f"alone-{burst}-{i}")
            call(tag)
        tags = [f"burst-{burst}-{i}" for i in range(8)]  # together: the consumer thread reads (and a leader)
        expected += tags
        threads = [threading.Thread(target=call, args=(tag,)) for tag in tags]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert replies == {tag: tag for tag in expected}


def test_a_caller_waiting_alone_reads_its_reply_on_its_own_thread(running_worker, host, broker_url, monkeypatch):
    if broker_url.startswith("memory"):
        pytest.skip("memory:// has kombu's consumer only: its consumer thread reads every reply")
    readers: list[str] = []
    on_reply = Client._on_reply

    def noting_the_reader(self, message) -> None:
        readers.append(threading.current_thread().name)
        on_reply(self, message)

    monkeypatch.setattr(Client, "_on_reply", noting_the_reader)
    with Client(broker_url) as client:
        assert client.call(host, "SystemHandler", "ping", timeout=15).code == Code.OK  # the consumer is up
        readers.clear()
        for _ in range(20):
            assert client.call(host, "SystemHandler", "ping", timeout=15).code == Code.OK
    me = threading.current_thread().name
    # the consumer thread may read one now and then (it looks once per 0.2 s, and a reply may be in then)
    assert len(readers) == 20 and readers.count(me) >= 10, readers


# -- AMQP: the reply connection's frames read by the client itself (``_AmqpReplies``) --------------------------

AMQP_HOST_PORT = "localhost:5672"
BIG = "x" * 700_000  # body frames of frame_max (128 KiB) each, over several receives of 64 KiB
HEADERS = {"text": "t", "number": 7, "flag": True, "nested": {"a": [1, "b"]}, "float": 1.5}
ANSWERS = {  # the command's data["kind"] → the reply's body and headers
    "big": (json.dumps({"code": 0, "msg": "ok", "data": {"text": BIG}}).encode(), {}),
    "empty": (b"", {}),
    "headers": (b'{"code":0,"msg":"ok","data":{"n":1}}', HEADERS),
    "late": (b'{"code":0,"msg":"ok","data":{"late":true}}', {}),  # answered after LATE_S
}
LATE_S = 0.45  # several of a waiting caller's reads (``LEAD_SLICE_S``, 0.1 s each)


class _RawResponder:
    """A foreign worker in plain py-amqp on a thread of its own: each command on the host's queue is answered
    as its data's ``kind`` says (``ANSWERS``), to its ``reply_to``."""

    def __init__(self, queue: str):
        self._conn = amqp.Connection(AMQP_HOST_PORT)
        self._conn.connect()
        self._channel = self._conn.channel()
        self._channel.queue_declare(queue, durable=True, auto_delete=False)
        self._channel.basic_consume(queue, callback=self._on_command)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_command(self, message: amqp.Message) -> None:
        kind = json.loads(message.body)["data"]["kind"]
        if kind == "late":
            time.sleep(LATE_S)
        body, headers = ANSWERS[kind]
        reply = amqp.Message(body, correlation_id=message.correlation_id, application_headers=headers)
        self._channel.basic_publish(reply, exchange="", routing_key=message.reply_to)
        self._channel.basic_ack(message.delivery_tag)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._conn.drain_events(timeout=0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


@pytest.fixture
def amqp_url() -> str:
    return require_broker("amqp", AMQP_URL)


@pytest.fixture
def raw_host(amqp_url: str) -> Iterator[str]:
    name = unique("kvt-host-")
    yield name
    delete_host_queue(amqp_url, name)


def _expect(kind: str, reply) -> None:
    if kind == "big":
        assert reply.code == Code.OK and reply.data == {"text": BIG}
    elif kind == "empty":
        assert reply.code == Code.INTERNAL_ERROR and "could not be read" in reply.data["detail"], reply
    else:
        assert reply.code == Code.OK and reply.data == {"n": 1}, reply


def test_replies_of_many_frames_of_no_body_and_with_every_kind_of_header_reach_their_callers_as_sent(
    amqp_url, raw_host, monkeypatch
):
    _every_kind_by_submit_and_by_call(amqp_url, raw_host, _RawResponder(host_queue_name(raw_host)), monkeypatch)


def _every_kind_by_submit_and_by_call(url: str, host: str, responder, monkeypatch) -> None:
    """Each kind of reply, read by the consumer thread (``submit``) and by the calling thread (``call``), its
    headers as sent; ``responder`` is closed at the end."""
    headers_seen: dict[str, object] = {}
    on_reply = Client._on_reply

    def noting_the_headers(self, message) -> None:
        headers_seen[message.properties.get("correlation_id")] = message.headers
        on_reply(self, message)

    monkeypatch.setattr(Client, "_on_reply", noting_the_headers)
    try:
        with Client(url) as client:
            for kind in ["big", "empty", "headers", "big", "headers", "empty"]:
                command = {"handler": "SystemHandler", "command": "ping", "data": {"kind": kind}}
                pending = client.submit(host, command)
                _expect(kind, client.wait(pending, 15))
                assert headers_seen.pop(pending.correlation_id) == (HEADERS if kind == "headers" else {})
                _expect(kind, client.call(host, "SystemHandler", "ping", {"kind": kind}, timeout=15))
                assert list(headers_seen.values()) == [HEADERS if kind == "headers" else {}]
                headers_seen.clear()
    finally:
        responder.close()


def _calls_answered_late_and_at_once(url: str, host: str) -> None:
    """Pings a responder answers at once (``headers``) and late (``late``), in turn: each reaches its caller."""
    with Client(url) as client:
        for kind in ("headers", "late", "headers", "late"):
            reply = client.call(host, "SystemHandler", "ping", {"kind": kind}, timeout=15)
            assert reply.code == Code.OK, reply
            assert reply.data == ({"late": True} if kind == "late" else {"n": 1})


def test_a_reply_that_comes_after_many_of_the_waiting_callers_reads_still_reaches_it(amqp_url, raw_host):
    """A caller waiting alone waits in ``recv`` itself, each wait bounded by the socket's receive timeout (one
    slice); the reply that comes slices later is read by it, and calls go on answered after it."""
    responder = _RawResponder(host_queue_name(raw_host))
    try:
        _calls_answered_late_and_at_once(amqp_url, raw_host)
    finally:
        responder.close()


def test_a_call_nobody_answers_waits_out_its_timeout_over_whole_and_cut_reads_then_ends_as_unknown_outcome(
    amqp_url, raw_host
):
    """The waiting caller reads in whole slices (one recv each) and, past the last whole one, polls for what is
    left of its timeout."""
    with Client(amqp_url) as client:
        started = time.monotonic()
        reply = client.call(raw_host, "SystemHandler", "ping", timeout=0.35)
        took = time.monotonic() - started
    assert reply.code == Code.UNKNOWN_OUTCOME and "no reply" in reply.data["detail"], reply
    assert took >= 0.35, took


@contextlib.contextmanager
def _raw_reading(amqp_url: str) -> Iterator[tuple]:
    """A reply queue consumed by py-amqp (what it delivers lands in ``arrived``) and read by the client's reader
    (what it takes lands in ``replies``), and a second connection to send on."""
    queue = unique("kvt.reading.")
    with Connection(amqp_url) as conn, Connection(amqp_url) as sender:
        raw = conn.connection
        channel = conn.channel()
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        arrived: list[amqp.Message] = []
        channel.basic_consume(queue, no_ack=True, callback=arrived.append)
        replies: list = []
        reader = _AmqpReplies(conn, raw, channel.channel_id, replies.append, 2.0)
        yield raw, sender, queue, arrived, replies, reader


def test_once_the_client_stops_reading_py_amqp_waits_on_the_reply_connection_as_long_as_it_takes(amqp_url):
    """The client's reads leave no system timeout behind: py-amqp's own blocking wait (no timeout) on the
    connection waits past the client's read slice for what comes."""
    with _raw_reading(amqp_url) as (raw, sender, queue, arrived, replies, reader):
        reader.read(0.1, None)  # a whole slice's wait: nothing comes
        reader.stop()
        later = threading.Timer(
            0.4, lambda: sender.default_channel.basic_publish(amqp.Message(b"late", correlation_id="1"), "", queue)
        )
        later.start()
        try:
            raw.sock.settimeout(None)  # as py-amqp's drain_events(timeout=None) sets it
            raw.drain_events()  # a system timeout left behind would end this wait with an error
        finally:
            later.join()
        assert replies == [] and [m.body for m in arrived] == [b"late"]


def test_stopping_the_reader_of_a_lost_connection_does_not_connect_it_again(amqp_url):
    """py-amqp answers ``Connection.transport`` on a lost connection by connecting again (with a deprecation
    warning): the reader's stop, run as the consumer gives a lost connection up, must not touch it."""
    with _raw_reading(amqp_url) as (raw, _sender, _queue, _arrived, _replies, reader):
        raw.collect()  # what py-amqp does once the broker is gone: the transport closed and dropped
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the reconnect comes with AMQPDeprecationWarning
            reader.stop()
        assert not raw.connected


class _Trickle:
    """The reply connection's socket, each receive cut to ``size`` octets: a reply arrives over many reads."""

    def __init__(self, sock: socket.socket, size: int):
        self._sock, self._size = sock, size

    def recv(self, size: int, flags: int = 0) -> bytes:
        return self._sock.recv(min(size, self._size), flags)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_a_reply_half_read_when_the_reading_stops_is_read_whole_by_py_amqp_afterwards(amqp_url):
    with _raw_reading(amqp_url) as (raw, sender, queue, arrived, replies, reader):
        reader._sock = _Trickle(reader._sock, 10_000)
        sender.default_channel.basic_publish(amqp.Message(b"small", correlation_id="1"), "", queue)
        sender.default_channel.basic_publish(amqp.Message(BIG.encode(), correlation_id="2"), "", queue)
        deadline = time.monotonic() + 10
        while (
            not (replies and reader._deliveries.arriving is not None and reader._deliveries.arriving.parts)
            and time.monotonic() < deadline
        ):
            reader.read(0.5, None)
        assert [r.body for r in replies] == [b"small"] and reader._deliveries.arriving.parts, "the big one is half read"
        reader.stop()  # py-amqp reads from here on: it is given the big reply's frames read so far
        while not arrived and time.monotonic() < deadline:
            raw.drain_events(timeout=1)
        assert [(m.correlation_id, m.body) for m in arrived] == [("2", BIG.encode())]


# -- Redis: the reply list's BRPOP answers read by the client itself (``_RedisReplies``) ------------------------


class _KombuRedisResponder:
    """A foreign worker in plain kombu over Redis on a thread of its own: each command on the host's queue is
    answered as its data's ``kind`` says (``ANSWERS``), to its ``reply_to``, by kombu's own Producer."""

    def __init__(self, url: str, queue: str):
        self._conn = Connection(url)
        self._queue = Queue(queue, durable=True, auto_delete=False)
        self._producer = Producer(self._conn.channel())
        self._consumer = Consumer(self._conn.channel(), queues=[self._queue], on_message=self._on_command)
        self._consumer.consume()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_command(self, message) -> None:
        body, headers = ANSWERS[json.loads(message.body)["data"]["kind"]]
        props = message.properties
        self._producer.publish(
            body, routing_key=props["reply_to"], correlation_id=props["correlation_id"], headers=headers
        )
        message.ack()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, socket.timeout):
                self._conn.drain_events(timeout=0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.cancel()
        self._conn.close()


@pytest.fixture
def redis_host() -> Iterator[tuple[str, str]]:
    url = require_broker("redis", REDIS_URL)
    name = unique("kvt-host-")
    yield url, name
    delete_host_queue(url, name)


def test_over_redis_replies_of_many_reads_of_no_body_and_with_every_kind_of_header_from_plain_kombu_reach_their_callers(
    redis_host, monkeypatch
):
    url, host = redis_host
    _every_kind_by_submit_and_by_call(url, host, _KombuRedisResponder(url, host_queue_name(host)), monkeypatch)


def test_over_redis_a_caller_alone_has_its_replys_brpop_at_redis_before_its_command(redis_host):
    """A caller publishing alone sends the BRPOP for its reply ahead of its command's LPUSH (``arm``): Redis hands
    the reply over as it lands, even when the caller has not had the CPU back since its publish. Seen as Redis
    sees it (MONITOR), for each call: the reply list's BRPOP, then the host queue's LPUSH; every reply read."""
    import redis

    url, host = redis_host
    queue = host_queue_name(host)
    responder = _KombuRedisResponder(url, queue)
    seen: list[tuple[str, str]] = []
    watching = threading.Event()
    stop = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(url, socket_timeout=10).monitor() as m:
            watching.set()
            for event in m.listen():
                words = event["command"].split(" ")
                if words[0] in ("BRPOP", "LPUSH") and len(words) > 1:
                    seen.append((words[0], words[1]))
                if stop.is_set() and words[0] == "ECHO" and host in event["command"]:
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    assert watching.wait(10)
    try:
        with Client(url) as client:
            assert client.call(host, "SystemHandler", "ping", {"kind": "headers"}, timeout=15).code == 0  # declares
            reply_list = client._reply_queue.name
            seen.clear()
            for _ in range(5):
                assert client.call(host, "SystemHandler", "ping", {"kind": "headers"}, timeout=15).code == 0
    finally:
        stop.set()
        redis.Redis.from_url(url).echo(f"kvt-stop-{host}")
        watcher.join(10)
        responder.close()
    # the client's BRPOPs and both LPUSHes (the responder's own BRPOPs of the host queue left out)
    ours = [seen_ for seen_ in seen if seen_ in (("BRPOP", reply_list), ("LPUSH", queue), ("LPUSH", reply_list))]
    pushes = [i for i, (command, key) in enumerate(ours) if command == "LPUSH" and key == queue]
    assert len(pushes) == 5, ours
    for at in pushes:  # each command's LPUSH comes right after the BRPOP for its reply, before the reply
        assert ours[at - 1 : at + 2] == [("BRPOP", reply_list), ("LPUSH", queue), ("LPUSH", reply_list)], ours


def test_over_redis_replies_waiting_together_reach_their_callers_in_a_few_reads_not_one_each(redis_host):
    """With many calls in flight the consumer thread reads: in front of its BRPOP, an RPOP of up to 64 replies
    takes whatever waits in the reply list in the same round trip. A foreign worker (plain kombu) answers 40
    commands at once (its replies, made by kombu's Producer, moved onto the reply list in one transaction):
    every caller gets its own reply, and Redis sees (MONITOR) a few reads of the reply list, not 40."""
    import redis

    url, host = redis_host
    queue = Queue(host_queue_name(host), durable=True, auto_delete=False)
    stage = unique("kvt-stage-")
    db = redis.Redis.from_url(url, socket_timeout=10)
    seen: list[list[str]] = []
    watching, moved = threading.Event(), threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(url, socket_timeout=10).monitor() as m:
            watching.set()
            for event in m.listen():
                words = event["command"].split(" ")
                if words[0] == "ECHO" and host in event["command"]:
                    return
                if words[0] == "LMOVE" and words[1:2] == [stage]:
                    moved.set()
                if moved.is_set() and words[0] in ("BRPOP", "RPOP"):
                    seen.append(words)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    assert watching.wait(10)
    try:
        with Client(url) as client, Connection(url) as conn:
            reply_list = client._reply_queue.name
            calls = [
                client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {"i": i}})
                for i in range(40)
            ]
            channel = conn.channel()
            commands = []
            deadline = time.monotonic() + 15
            while len(commands) < 40 and time.monotonic() < deadline:
                message = queue.bind(channel).get(no_ack=True)
                if message is None:
                    time.sleep(0.01)
                else:
                    commands.append(message)
            assert len(commands) == 40
            producer = Producer(channel)
            for message in commands:
                i = json.loads(message.body)["data"]["i"]
                body = json.dumps({"code": 0, "msg": "ok", "data": {"i": i}})
                producer.publish(body, routing_key=stage, correlation_id=message.properties["correlation_id"])
            with db.pipeline(transaction=True) as pipe:  # all 40 in the reply list at once
                for _ in commands:
                    pipe.lmove(stage, reply_list, "RIGHT", "LEFT")
                pipe.execute()
            replies = [client.wait(pending, 15) for pending in calls]
    finally:
        db.echo(f"kvt-stop-{host}")
        watcher.join(10)
        db.delete(stage)
        db.close()
    assert [(reply.code, reply.data) for reply in replies] == [(0, {"i": i}) for i in range(40)]
    reads = [words for words in seen if words[1] == reply_list]
    assert ["RPOP", reply_list, "64"] in reads, reads
    assert len(reads) < 10, reads


def test_over_redis_a_reply_that_is_not_kombus_message_is_dropped_with_a_warning_and_the_replies_around_it_arrive(
    redis_host, caplog
):
    import redis

    url, host = redis_host
    db = redis.Redis.from_url(url, socket_timeout=10)
    try:
        with caplog.at_level(logging.WARNING, "kvmworker.client"), Client(url) as client:
            reply_list = client._reply_queue.name
            calls = [client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {"kind": "headers"}})]
            db.lpush(reply_list, b"not json at all")  # in the list ahead of every reply
            calls += [
                client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {"kind": "headers"}})
                for _ in range(5)
            ]
            responder = _KombuRedisResponder(url, host_queue_name(host))
            try:
                assert [client.wait(pending, 15).code for pending in calls] == [Code.OK] * 6
            finally:
                responder.close()
    finally:
        db.close()
    dropped = [r.getMessage() for r in caplog.records if "not kombu's message was dropped" in r.getMessage()]
    assert len(dropped) == 1 and "not json at all" in dropped[0], dropped


def test_over_redis_a_reply_that_comes_after_many_of_the_waiting_callers_reads_still_reaches_it(redis_host):
    """A caller waiting alone waits in ``recv`` itself, each wait bounded by the socket's receive timeout (one
    slice, ``LEAD_SLICE_S``); a reply that comes several slices later is read by it, and calls go on answered."""
    url, host = redis_host

    class _Late(_KombuRedisResponder):
        def _on_command(self, message) -> None:
            if json.loads(message.body)["data"]["kind"] == "late":
                time.sleep(LATE_S)
            super()._on_command(message)

    responder = _Late(url, host_queue_name(host))
    try:
        _calls_answered_late_and_at_once(url, host)
    finally:
        responder.close()
