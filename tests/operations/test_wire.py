"""§8 as a foreign orchestrator sees it: plain kombu against a worker process (built as ``kvmworker worker`` is,
plus the test handlers) on the shared RabbitMQ. Commands are published to the host's exchange with a reply queue
of our own; events are read from a queue of our own bound to ``kvmworker.events``. What is sent is checked against
the published schemas, and so is what comes back."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator

import jsonschema
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from kvmworker.protocol.codes import Code
from tests.conftest import AMQP_URL, require_broker
from tests.operations.handlers import marked
from tests.support.cli import ROOT
from tests.support.processes import WorkerProcess, stop_process, wait_for

SCHEMAS = ROOT / "schemas"
WAIT_S = 30


def schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


class Orchestrator:
    """One kombu connection: commands out to ``kvmworker``/<host>, replies and ``<host>.operation.*`` events in."""

    def __init__(self, url: str, host: str):
        self.conn = Connection(url)
        self.host = host
        self.replies: dict[str, dict] = {}
        self.events: list[dict] = []
        channel = self.conn.channel()
        # The host's queue, declared as every caller does before its first command (INTERFACE §4): a command
        # published to the exchange before the worker has declared it would be routed nowhere.
        commands = Exchange("kvmworker", "direct", durable=True)
        Queue(f"kvmworker.{host}", commands, routing_key=host, durable=True).bind(channel).declare()
        self.reply_queue = Queue(f"kvt.ops.{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True)
        events = Exchange("kvmworker.events", type="topic", durable=True)
        self.event_queue = Queue(
            f"kvt.ops.events.{uuid.uuid4().hex[:8]}", events, routing_key=f"{host}.operation.*", auto_delete=True
        )
        self.consumers = [
            Consumer(channel, [self.reply_queue], on_message=self._reply, no_ack=True),
            Consumer(channel, [self.event_queue], on_message=self._event, no_ack=True),
        ]
        for consumer in self.consumers:
            consumer.consume()
        self.producer = Producer(self.conn.channel())

    def _reply(self, message) -> None:
        self.replies[message.properties["correlation_id"]] = json.loads(message.body)

    def _event(self, message) -> None:
        self.events.append({"routing_key": message.delivery_info["routing_key"], **json.loads(message.body)})

    def send(self, handler: str, command: str, data: dict, msg_id: str | None = None, timeout: float = 600) -> str:
        """Published; returns the msg_id (also the correlation id here)."""
        msg_id = msg_id or str(uuid.uuid4())
        body = {"handler": handler, "command": command, "data": data, "msg_id": msg_id, "timeout": timeout}
        self.producer.publish(
            json.dumps(body),
            exchange=Exchange("kvmworker", "direct", durable=True),
            routing_key=self.host,
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=msg_id,
            message_id=msg_id,
            reply_to=self.reply_queue.name,
        )
        return msg_id

    def until(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=0.2)
        return predicate()

    def reply(self, msg_id: str) -> dict:
        assert self.until(lambda: msg_id in self.replies), f"no reply to {msg_id}"
        return self.replies[msg_id]

    def call(self, handler: str, command: str, **data) -> dict:
        return self.reply(self.send(handler, command, data, timeout=WAIT_S))

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def worker(tmp_path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(require_broker("amqp", AMQP_URL), tmp_path)
    yield w
    (w.effects / "all.release").touch()
    w.stop_all()


def test_a_foreign_orchestrator_follows_cancels_a_queued_and_a_running_command_and_nothing_is_left_unacked(worker):
    worker.start()
    orchestrator = Orchestrator(worker.broker_url, worker.host)
    try:
        run_the_story(orchestrator, worker)
    finally:
        orchestrator.close()
    assert stop_process(worker.current) == 0
    with Connection(worker.broker_url) as conn:
        _, waiting, _ = conn.default_channel.queue_declare(queue=f"kvmworker.{worker.host}", passive=True)
    assert waiting == 0, "a message was left unacknowledged: it went back to the host's queue when the worker stopped"


def run_the_story(o: Orchestrator, worker: WorkerProcess) -> None:
    replies, events, cancel_data = schema("reply.json"), schema("event.json"), schema("SystemHandler.cancel.json")
    first = o.send("SlowHandler", "progress", {"key": "k", "seconds": 120, "steps": 60})
    queued = o.send("SlowHandler", "progress", {"key": "k", "seconds": 1, "steps": 1})
    assert wait_for(lambda: marked(worker.effects, first, "started"), WAIT_S)

    def phase_of(msg_id: str) -> str | None:
        return o.call("SystemHandler", "result", msg_id=msg_id)["data"].get("phase")

    assert o.until(lambda: phase_of(first) == "step 3 of 60"), "no progress in result"  # 4 s in: > 2 s of running
    now = o.call("SystemHandler", "operations", state="running")
    replies.validate(now)
    assert [(op["msg_id"], op["state"]) for op in now["data"]["operations"]] == [(first, "running"), (queued, "queued")]
    waiting = o.call("SystemHandler", "result", msg_id=queued)
    assert (waiting["code"], waiting["data"]["state"]) == (-1, "queued")

    cancel_data.validate({"msg_id": queued})
    dropped = o.call("SystemHandler", "cancel", msg_id=queued)
    assert (dropped["code"], dropped["data"]["state"]) == (0, "dropped")
    answer = o.reply(queued)  # its own message got its reply: published to our reply queue like any other
    replies.validate(answer)
    assert (answer["code"], answer["msg"]) == (Code.CANCELLED, "操作已取消")

    stopping = o.call("SystemHandler", "cancel", msg_id=first)
    assert (stopping["code"], stopping["data"]["state"]) == (0, "cancelling")
    assert o.reply(first)["code"] == Code.CANCELLED
    assert o.until(lambda: any(e["routing_key"].endswith(".operation.done") for e in o.events))
    assert not marked(worker.effects, queued, "started")

    for event in o.events:
        events.validate({k: v for k, v in event.items() if k != "routing_key"})
    progress = [e for e in o.events if e["routing_key"] == f"{worker.host}.operation.progress"]
    phases = [e["data"]["phase"] for e in progress]
    assert len(phases) >= 3 and phases == [f"step {i} of 60" for i in range(1, len(phases) + 1)]
    assert {(e["msg_id"], e["subject"], e["state"]) for e in progress} == {(first, first, "running")}
    [done] = [e for e in o.events if e["routing_key"] == f"{worker.host}.operation.done"]
    assert (done["msg_id"], done["state"], done["data"]["code"]) == (first, "cancelled", Code.CANCELLED)
    assert [e["seq"] for e in o.events] == sorted(e["seq"] for e in o.events)
