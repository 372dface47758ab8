"""Raw messages published with plain kombu, as a foreign orchestrator would (not through our client)."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from kvmworker.protocol.codes import Code


class RawCaller:
    """A bare kombu publisher with its own reply queue."""

    def __init__(self, url: str, host: str):
        self.conn = Connection(url)
        self.host = host
        self.reply_queue = Queue(f"kvt.raw.{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
        self.replies: dict[str, dict] = {}
        self.channel = self.conn.channel()
        self.consumer = Consumer(self.channel, [self.reply_queue], on_message=self._on, no_ack=True)
        self.consumer.consume()

    def _on(self, message) -> None:
        self.replies[message.properties.get("correlation_id")] = json.loads(message.body)

    def send(self, body, content_type="application/json", reply=True, **props) -> str:
        correlation_id = uuid.uuid4().hex
        Producer(self.conn.channel()).publish(
            body,
            exchange=Exchange("kvmworker", "direct", durable=True),
            routing_key=self.host,
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            correlation_id=correlation_id,
            reply_to=self.reply_queue.name if reply else None,
            **props,
        )
        return correlation_id

    def reply_for(self, correlation_id: str, timeout: float = 10) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while correlation_id not in self.replies and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=0.2)
        return self.replies[correlation_id]

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def raw(running_worker, broker_url, host):
    caller = RawCaller(broker_url, host)
    yield caller
    caller.close()


PING = json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}})


def assert_still_serving(raw: RawCaller) -> None:
    assert raw.reply_for(raw.send(PING))["code"] == Code.OK


def test_the_documented_body_sent_raw_is_answered_with_a_reply_object(raw):
    reply = raw.reply_for(raw.send(PING))
    assert set(reply) == {"code", "msg", "data"}
    assert reply["code"] == 0 and reply["msg"] == "成功"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'"just a string"', b"\xff\xfe\x00", b'{"handler": "SystemHandler"}'],
    ids=["broken", "array", "string", "binary", "no-command"],
)
def test_a_malformed_body_is_answered_20001_and_the_worker_keeps_serving(raw, body):
    reply = raw.reply_for(raw.send(body))
    assert (reply["code"], reply["msg"]) == (20001, "无效的请求")
    assert reply["data"]["detail"]
    assert_still_serving(raw)


@pytest.mark.parametrize("content_type", ["application/x-python-serialize", "application/x-yaml", "text/plain"])
def test_a_non_json_content_type_is_refused_without_being_decoded(raw, content_type):
    reply = raw.reply_for(raw.send(b"\x80\x04\x95cos\nsystem\n(S'touch /tmp/pwned'\ntR.", content_type=content_type))
    assert reply["code"] == 20001
    assert "content type" in reply["data"]["detail"]
    assert_still_serving(raw)


def test_an_oversize_body_is_answered_20001_before_decoding(raw):
    body = b'{"handler": "SystemHandler", "command": "ping", "data": {"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}}'
    reply = raw.reply_for(raw.send(body), timeout=20)
    assert reply["code"] == 20001
    assert "limit" in reply["data"]["detail"]
    assert_still_serving(raw)


def test_deep_nesting_and_huge_integers_are_answered_20001(raw):
    deep = b'{"handler":"SystemHandler","command":"ping","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    huge = b'{"handler":"SystemHandler","command":"ping","data":{"n":' + b"9" * 5000 + b"}}"
    assert raw.reply_for(raw.send(deep))["code"] == 20001
    assert raw.reply_for(raw.send(huge))["code"] == 20001
    assert_still_serving(raw)


def test_a_message_without_reply_to_is_consumed_and_the_worker_keeps_serving(raw, running_worker):
    raw.send(PING, reply=False)
    raw.send(b"garbage", reply=False)
    assert_still_serving(raw)
