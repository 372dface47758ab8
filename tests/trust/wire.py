"""A hostile or foreign publisher: plain kombu, headers and signatures made by hand, its own reply queue."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.trust.signing import Signer


@dataclass
class Received:
    raw: bytes
    body: dict[str, Any]
    headers: dict[str, Any]
    properties: dict[str, Any]


@dataclass
class Outgoing:
    """One message as it will be published; tests change a field after signing to forge it."""

    body: bytes
    msg_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    content_type: str = "application/json"


class RawPublisher:
    def __init__(self, url: str, host: str):
        self.conn = Connection(url)
        self.host = host
        self.reply_queue = Queue(f"kvt.trust.{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
        self.replies: dict[str, list[Received]] = {}
        self.consumer = Consumer(self.conn.channel(), [self.reply_queue], on_message=self._on, no_ack=True)
        self.consumer.consume()
        self.producer = Producer(self.conn.channel())

    def _on(self, message) -> None:
        received = Received(
            message.body, json.loads(message.body), dict(message.headers or {}), dict(message.properties)
        )
        self.replies.setdefault(message.properties.get("correlation_id"), []).append(received)

    def message(self, body: bytes | dict, *, timeout: float = 30, issued: float | None = None) -> Outgoing:
        """An unsigned message with the headers our client stamps (host, issued, expiry), answered to our queue."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        issued = time.time() if issued is None else issued
        headers = {HEADER_HOST: self.host, HEADER_ISSUED_AT: round(issued, 6), HEADER_EXPIRES_AT: issued + timeout}
        return Outgoing(raw, headers=headers, reply_to=self.reply_queue.name)

    @staticmethod
    def sign(out: Outgoing, signer: Signer) -> Outgoing:
        out.headers.update(signer.sign(out.body, out.msg_id, out.headers[HEADER_HOST], out.reply_to, out.headers))
        return out

    def send(self, out: Outgoing, *, to_host: str | None = None) -> str:
        correlation_id = uuid.uuid4().hex
        self.producer.publish(
            out.body,
            exchange=Exchange("kvmworker", "direct", durable=True),
            routing_key=to_host or self.host,
            content_type=out.content_type,
            content_encoding="binary",
            correlation_id=correlation_id,
            message_id=out.msg_id,
            reply_to=out.reply_to,
            headers=out.headers,
        )
        return correlation_id

    def wait(self, correlation_id: str, timeout: float = 10) -> list[Received]:
        """Every reply that arrived for this correlation id within ``timeout`` (empty when none)."""
        deadline = time.monotonic() + timeout
        while not self.replies.get(correlation_id) and time.monotonic() < deadline:
            self.drain(0.1)
        return self.replies.get(correlation_id, [])

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=min(0.1, max(deadline - time.monotonic(), 0.01)))

    def close(self) -> None:
        self.conn.release()


def unsigned_answerer(producer: Producer, answered: list[str] | None = None) -> Any:
    """A fake worker's consumer callback: answers every command at once with an unsigned success (a forged
    reply) to its reply_to, notes its correlation id in ``answered``, acks it."""

    def forge(body, message) -> None:
        producer.publish(
            {"code": 0, "msg": "成功", "data": {"forged": True}},
            routing_key=message.properties["reply_to"],
            correlation_id=message.properties["correlation_id"],
        )
        if answered is not None:
            answered.append(message.properties["correlation_id"])
        message.ack()

    return forge
