"""§7 on the wire, read with plain kombu as a foreign orchestrator would: the durable topic exchange, the routing
key, persistent JSON bodies that the published schema accepts, and the reply signatures when keys are configured."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kombu import Connection, Consumer, Exchange, Producer, Queue

from kvmworker.client import Client
from kvmworker.events.model import Event
from kvmworker.protocol.wire import HEADER_SIGNATURE
from tests.conftest import AMQP_URL, REDIS_URL, require_broker, unique
from tests.events.handlers import SOURCE
from tests.support.cli import ROOT
from tests.trust.conftest import signer_of, write_private, write_trusted

EVENT_SCHEMA = json.loads((ROOT / "schemas" / "event.json").read_text())


class RawEvents:
    """A queue of the test's own bound to ``kvmworker.events``: every message as the broker delivers it."""

    def __init__(self, url: str, binding: str):
        self.conn = Connection(url)
        exchange = Exchange("kvmworker.events", type="topic", durable=True)
        self.queue = Queue(f"kvt.wire.{uuid.uuid4().hex[:8]}", exchange, routing_key=binding, auto_delete=True)
        self.messages: list = []
        self.consumer = Consumer(self.conn.channel(), [self.queue], on_message=self._on, accept=["json"])
        self.consumer.consume()

    def _on(self, message) -> None:
        self.messages.append(message)
        message.ack()

    def wait(self, count: int, timeout: float = 30) -> list:
        import time

        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=0.2)
        return self.messages

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


def test_a_foreign_consumer_gets_persistent_json_events_on_the_documented_routing_key(amqp, start_event_worker):
    host = unique("kvt-wire-")
    raw = RawEvents(amqp, f"{host}.{SOURCE}.*")
    try:
        start_event_worker(amqp, host)
        with Client(amqp) as client:
            assert client.call(host, "EventProbeHandler", "emit", {"count": 3}, timeout=30).code == 0
        messages = raw.wait(3)
    finally:
        raw.close()
    assert len(messages) == 3
    validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
    for message in messages:
        body = json.loads(message.body)
        validator.validate(body)
        assert message.delivery_info["routing_key"] == f"{host}.probe.tick"
        assert message.delivery_info["exchange"] == "kvmworker.events"
        assert message.properties["delivery_mode"] == 2
        assert message.content_type == "application/json"
        assert message.properties["message_id"] == f"{host}:{body['seq']}"
        assert HEADER_SIGNATURE not in (message.headers or {}), "a worker without keys signs nothing"
    exchanges = subprocess.run(
        ["rabbitmqctl", "-q", "list_exchanges", "name", "type", "durable", "--no-table-headers"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "kvmworker.events\ttopic\ttrue" in exchanges


@pytest.fixture(params=["amqp", "redis"])
def real_broker(request) -> str:
    return require_broker(request.param, {"amqp": AMQP_URL, "redis": REDIS_URL}[request.param])


@pytest.fixture
def keys(tmp_path) -> Iterator[dict]:
    orchestrator, reply, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    yield {
        "orchestrator": write_private(tmp_path / "orchestrator.json", "o1", {"o1": orchestrator}),
        "worker_trust": write_trusted(tmp_path / "worker-trusted.json", orchestrator={"o1": orchestrator}),
        "reply": write_private(tmp_path / "reply.json", "r1", {"r1": reply}),
        "stranger": write_private(tmp_path / "stranger.json", "r1", {"r1": stranger}),
        "reply_key": reply,
    }


def test_a_keyed_worker_signs_its_events_and_a_signing_client_drops_events_nobody_signed(
    real_broker, keys, tmp_path, start_event_worker, follow
):
    host = unique("kvt-wire-")
    client_trust = write_trusted(tmp_path / "client-trusted.json", hosts={host: {"r1": keys["reply_key"]}})
    signer = signer_of(keys["orchestrator"], client_trust)
    with Client(real_broker, signer=signer) as client:
        follower = follow(client, host=host)
        start_event_worker(real_broker, host, keys_file=keys["reply"], trusted_keys_file=keys["worker_trust"])
        assert follower.wait_for(lambda f: len(f.events) == 1), "the signed online did not arrive"
        forged = Event(host=host, seq=2, time=1.0, source="vm", kind="lifecycle", subject="kvt-vm", state="stopped")
        stranger = signer_of(keys["stranger"], client_trust)  # a key the host does not hold
        with Connection(real_broker) as conn:
            producer = Producer(conn.channel())
            for headers in ({}, stranger.sign(forged.to_body(), "x", host, None, _times())):
                producer.publish(
                    forged.to_body(), exchange=Exchange("kvmworker.events", "topic", durable=True),
                    routing_key=forged.routing_key, content_type="application/json", headers=headers,
                    message_id=f"{host}:2", correlation_id="kvmworker.events",
                )  # fmt: skip
        assert client.call(host, "EventProbeHandler", "emit", {"count": 2}, timeout=30).code == 0
        assert follower.wait_for(lambda f: len(f.of()) == 2)
    assert [(e.source, e.seq) for e in follower.events] == [("worker", 1), (SOURCE, 2), (SOURCE, 3)]
    assert follower.gaps == []


def _times() -> dict:
    from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_ISSUED_AT

    return {HEADER_ISSUED_AT: 1.0, HEADER_EXPIRES_AT: 2.0}
