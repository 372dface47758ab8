"""§7 through broker outages, on a private RabbitMQ node this module restarts (never the shared one): events
emitted while the broker is away wait on disk and arrive afterwards in order; past the buffer's bound the
oldest are dropped and the next sync says how many."""

from __future__ import annotations

import socket
import uuid

import pytest

from kvmworker.client import Client
from kvmworker.events.consumer import Gap
from tests.conftest import unique
from tests.events.conftest import contiguous, seqs
from tests.events.handlers import EmitData
from tests.faults.brokers import private_rabbit, require_private_brokers
from tests.support.processes import wait_for


def free_port(first: int = 5700, last: int = 5799) -> int:
    """A port for the node (and its distribution port, 20000 above) that nothing listens on."""
    for port in range(first, last):
        if all(_free(p) for p in (port, port + 20000)):
            return port
    raise RuntimeError("no free port for a private RabbitMQ node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def rabbit():
    require_private_brokers()
    with private_rabbit("kvt-events", free_port()) as node:
        yield node


def test_events_emitted_while_rabbitmq_restarts_all_arrive_afterwards_in_order(rabbit, start_event_worker, follow):
    host = unique("kvt-ev-")
    with Client(rabbit.url) as client:
        # a durable queue of the orchestrator's own: it outlives the restart, as the events in it do
        follower = follow(client, host=host, queue=f"kvt.events.{uuid.uuid4().hex[:8]}")
        worker = start_event_worker(rabbit.url, host)
        assert follower.wait_for(lambda f: len(f.events) >= 1), "online did not arrive"
        reply = client.call(host, "EventProbeHandler", "emit", {"count": 200, "interval": 0.05, "background": True})
        assert reply.code == 0, reply
        assert follower.wait_for(lambda f: len(f.of()) >= 10), "the first events did not arrive"

        rabbit.restart()  # events keep coming meanwhile: the first arrived, the rest wait in the worker's buffer

        assert follower.wait_for(lambda f: len(f.of()) == 200, timeout=120), f"{len(follower.of())} of 200"
    ticks = follower.of()
    assert [e.data["i"] for e in ticks] == list(range(200))
    assert seqs(follower.events) == list(range(1, len(follower.events) + 1))
    assert follower.gaps == []
    buffer = worker.probe.events.emitter.buffer
    assert wait_for(lambda: buffer.pending_count() == 0, 10), "the buffer did not empty"


def test_an_overflowing_buffer_drops_the_oldest_and_the_next_sync_says_how_many(rabbit, start_event_worker, follow):
    host = unique("kvt-ev-")
    with Client(rabbit.url) as client:
        follower = follow(client, host=host, queue=f"kvt.events.{uuid.uuid4().hex[:8]}")
        worker = start_event_worker(rabbit.url, host, event_buffer=50)
        assert follower.wait_for(lambda f: len(f.events) == 1), "online did not arrive"

        rabbit.stop()
        try:
            # the libvirt/netlink side of the host goes on changing; nothing can reach the broker
            emitted = worker.probe.emit_now(EmitData(count=120, subject="kvt-flood"))
        finally:
            rabbit.start()
        assert emitted == list(range(2, 122))
        assert worker.running.worker.connected.wait(60), "the worker did not reconnect"
        # the sync itself takes a place in the buffer: asked before the buffer drained, it would push out one more
        buffer = worker.probe.events.emitter.buffer
        assert wait_for(lambda: buffer.pending_count() == 0, 60), "the buffered events did not go out"
        assert wait_for(lambda: client.ready, 60)
        assert client.call(host, "EventProbeHandler", "sync", {"reason": "after the outage"}, timeout=30).code == 0

        assert follower.wait_for(lambda f: any(e.state == "sync" for e in f.events), timeout=60)
    ticks = follower.of()
    assert [e.data["i"] for e in ticks] == list(range(70, 120)), "not the newest 50, in order"
    assert seqs(ticks) == list(range(72, 122))
    assert follower.gaps == [Gap(host, 2, 71)]
    sync = next(e for e in follower.events if e.state == "sync")
    assert sync.data["dropped"] == 70
    assert sync.seq == 122 and contiguous(seqs(follower.events)[1:])
    assert worker.probe.events.emitter.buffer.dropped() == 0, "the count is reset once a sync said it"
