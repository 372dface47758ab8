"""A real 3-node RabbitMQ cluster (quorum queues) that loses nodes under a worker, a client and a bridge.

The cluster is private (ports 5691-5693, nodes and data directories of its own), formed once for the module
and torn down at its end; each test starts with all three nodes running again.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from kombu import Connection, Consumer, Producer, Queue

from tests.faults.brokers import PrivateCluster, private_cluster, require_private_brokers

pytestmark = [pytest.mark.broker, pytest.mark.slow]
FIRST_PORT = 5691  # tests/faults/* use 5682-5684; the cluster's Erlang distribution ports are 25691-25693


@pytest.fixture(scope="module")
def cluster_once() -> Iterator[PrivateCluster]:
    require_private_brokers()
    with private_cluster("kvtcl", FIRST_PORT) as cluster:
        yield cluster


@pytest.fixture
def cluster(cluster_once: PrivateCluster) -> PrivateCluster:
    cluster_once.all_up()
    return cluster_once


def test_plain_kombu_failover_after_a_failed_ack_reconnects_silently_to_a_connection_that_consumes_nothing(cluster):
    """The stall, in plain kombu: this is what the worker did before it tracked whether it consumes."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    queue = Queue(f"kvt-stall-{time.time_ns()}", durable=True)
    received = []
    with Connection(f"{cluster.url(a)};{cluster.url(b)}", heartbeat=30) as conn:
        consumer = Consumer(conn.channel(), queues=[queue], on_message=received.append)
        consumer.consume()
        Producer(conn.default_channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        conn.drain_events(timeout=5)
        a.kill()
        for _ in range(2):  # the first write after the peer died succeeds; the RST makes the next one fail
            try:
                received[0].ack()  # as Worker._settle did: a failed ack was only logged
            except Exception:
                pass
            time.sleep(0.2)
        with Connection(cluster.url(b)) as other:  # a command that waits in the (replicated) queue
            Producer(other.default_channel).publish({"n": 2}, routing_key=queue.name, declare=[queue])
        stalled_for = 0.0
        while stalled_for < 5:
            try:
                conn.drain_events(timeout=0.5)  # kombu reconnects to b here, quietly: no channel, no consumer
            except (TimeoutError, socket.timeout):
                pass
            conn.heartbeat_check()
            stalled_for += 0.5
        assert conn.connected and f":{b.port}/" in conn.as_uri(), "kombu did not fail over to the next URL"
        assert [m.payload for m in received] == [{"n": 1}], "the command waiting in the queue was delivered"
        assert cluster.queue_depth(queue.name) >= 1
        queue.bind(conn.default_channel).delete()
