"""Network and link events as an orchestrator receives them: a worker started with ``--netns`` on the test's
namespace publishes to RabbitMQ, and a plain kombu consumer bound to the ``kvmworker.events`` topic exchange
reads them, with their routing keys, across a worker restart."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Queue

from kvmworker.client import Client
from kvmworker.netplane.naming import bridge_name
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from tests.conftest import AMQP_URL, require_broker, unique
from tests.netplane.conftest import NICS, Kernel, flat

pytestmark = [pytest.mark.netlink, pytest.mark.broker]


class TopicListener:
    """A foreign orchestrator's consumer: an exclusive queue bound to ``kvmworker.events`` with ``<host>.#``."""

    def __init__(self, url: str, host: str):
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, host), daemon=True)
        self._thread.start()
        assert self._bound.wait(15), "could not bind to the events exchange"

    def _run(self, url: str, host: str) -> None:
        exchange = Exchange("kvmworker.events", type="topic", durable=True)
        queue = Queue(unique("kvt-events-"), exchange, routing_key=f"{host}.#", exclusive=True, auto_delete=True)
        with Connection(url) as conn, Consumer(conn, [queue], callbacks=[self._on_message], accept=["json"]):
            self._bound.set()
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    continue

    def _on_message(self, body: Any, message: Any) -> None:
        event = json.loads(message.body) if isinstance(message.body, (bytes, str)) else body
        with self._changed:
            self.received.append((message.delivery_info["routing_key"], event))
            self._changed.notify_all()
        message.ack()

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next(((key, e) for key, e in self.received if match(e)), None)
                if found is not None:
                    return found
                if time.monotonic() >= deadline:
                    seen = "\n".join(f"{key} {e['subject']} {e['state']} {e.get('reason')}" for key, e in self.received)
                    raise AssertionError(f"no such event within {timeout} s; received:\n{seen or 'none'}")
                self._changed.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def network_event(network_id: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["source"] == "network" and e["subject"] == network_id and e["state"] == state


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


@pytest.fixture
def listener(amqp: str, host: str) -> Iterator[TopicListener]:
    listening = TopicListener(amqp, host)
    yield listening
    listening.close()


def run_worker(settings: Settings) -> RunningWorker:
    running = start_worker(settings)
    assert running.worker.connected.wait(15), "worker did not connect to the broker"
    return running


def test_a_worker_publishes_network_and_link_events_with_their_routing_keys_across_a_restart(
    amqp, host, namespace, state_dir, carrier, listener: TopicListener, kernel: Kernel
):
    settings = Settings(
        host=host, broker_url=amqp, state_dir=state_dir, netns=namespace, physical_interfaces=list(NICS)
    )
    network_id, msg_id = str(uuid.uuid4()), str(uuid.uuid4())
    bridge = bridge_name(network_id)
    running = run_worker(settings)
    try:
        with Client(amqp) as client:
            assert client.call(host, "NetworkHandler", "create", flat(network_id), msg_id=msg_id).code == 0
        key, created = listener.wait_for(network_event(network_id, "created"))
        assert key == f"{host}.network.state" and created["msg_id"] == msg_id and created["host"] == host
        key, added = listener.wait_for(lambda e: e["subject"] == bridge and e["state"] == "added")
        assert key == f"{host}.link.state" and added["msg_id"] == msg_id

        kernel.ip("link", "del", bridge)
        _, degraded = listener.wait_for(network_event(network_id, "degraded"))
        assert degraded["reason"] == "bridge_gone" and "msg_id" not in degraded
    finally:
        running.stop(timeout=10)

    running = run_worker(settings)  # finds the bridge missing, puts it back, and says so
    try:
        _, restored = listener.wait_for(network_event(network_id, "restored"))
        assert "msg_id" not in restored and restored["data"]["resolved"] == ["bridge_gone"]
        _, offline = listener.wait_for(lambda e: e["source"] == "worker" and e["state"] == "offline")
        _, online = listener.wait_for(lambda e: e["source"] == "worker" and e["seq"] > offline["seq"])
        assert online["state"] == "online" and online["data"]["networks"][network_id]["health"] == "healthy"
    finally:
        running.stop(timeout=10)
    seqs = [event["seq"] for _, event in listener.received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "in order, none missing, across the restart"
