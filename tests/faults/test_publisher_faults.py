"""The publisher on a private RabbitMQ node that drops its connection or goes away with messages in flight.

To have messages certainly unconfirmed when the connection goes, the node is first told to stop taking
publishes (a memory high watermark of 0: RabbitMQ blocks publishing connections and reads nothing more from
them); ``rabbitmqctl close_connection`` then closes the publisher's connection under them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from kombu import Queue

from kvmworker.transport.connection import open_connection
from kvmworker.transport.publisher import Publisher, nacked
from tests.faults.brokers import PrivateRabbit, private_rabbit, require_private_brokers
from tests.spine.test_publisher import Outcomes, drain, name, queues
from tests.support.processes import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    require_private_brokers()
    with private_rabbit("kvt-publish", 5686) as node:
        yield node


def close_every_connection(rabbit: PrivateRabbit) -> int:
    """Close every client connection on the node (only this test's exist there); how many there were."""
    pids = rabbit.ctl("list_connections", "pid", "--no-table-headers").split()
    for pid in pids:
        rabbit.ctl("close_connection", pid, "kvt: the connection is closed under the publisher")
    return len(pids)


@pytest.mark.parametrize("inline", [False, True], ids=["written-by-the-publishing-thread", "written-by-the-caller"])
def test_a_connection_closed_with_messages_unconfirmed_sends_them_again_over_the_next_url_and_each_arrives(
    rabbit, caplog, inline
):
    # two URLs for the same node: the log shows the publisher moving on to the second one
    first, second = rabbit.url, rabbit.url.replace("127.0.0.1", "127.0.0.2")
    queue = Queue(name("lost"), durable=True, auto_delete=False)
    n = 200
    outcomes = Outcomes(n)
    with queues(rabbit.url, queue), caplog.at_level(logging.INFO, "kvmworker.publisher"):
        publisher = Publisher(open_connection(f"{first};{second}"))
        try:
            publisher.publish(b"{}", routing_key=queue.name, declare=(queue,), message_id="before")
            rabbit.ctl("set_vm_memory_high_watermark", "0")  # publishing connections are blocked from now on
            try:
                for i in range(n):
                    publisher.publish_async(
                        b"{}",
                        routing_key=queue.name,
                        persistent=True,
                        message_id=str(i),
                        done=outcomes.done_for(i),
                        inline=inline,
                    )
                assert not outcomes.wait(2), "the broker confirmed messages while it was told to take none"
                assert publisher.counts.inline == (n if inline else 0)
                assert close_every_connection(rabbit) >= 1
                assert wait_for(lambda: publisher.counts.resent >= n, 20), publisher.counts
            finally:
                rabbit.ctl("set_vm_memory_high_watermark", "0.4")
            assert outcomes.wait(60), f"{n - len(outcomes.order)} messages never heard of"
        finally:
            publisher.close()
        arrived = drain(rabbit.url, queue)
    assert outcomes.by_message == {i: [None] for i in range(n)}
    assert set(arrived) == {"before", *map(str, range(n))}, "a confirmed message is not in the queue"
    assert "lost its connection" in caplog.text and f"{n} unconfirmed message(s) go out again" in caplog.text
    moved_on = re.search(r"publishing on amqp://guest:\*+@127\.0\.0\.2:5686//", caplog.text)  # password masked
    assert moved_on, "not sent again over the next URL"


def test_messages_for_a_broker_that_stays_away_fail_after_their_retries_and_publishing_resumes_once_it_is_back(
    rabbit,
):
    queue = Queue(name("away"), durable=True, auto_delete=False)
    outcomes = Outcomes(5)
    with queues(rabbit.url, queue):
        publisher = Publisher(open_connection(rabbit.url))
        try:
            # persistent: the node's restart keeps it
            publisher.publish(b"{}", routing_key=queue.name, declare=(queue,), persistent=True, message_id="before")
            rabbit.stop_app()
            try:
                for i in range(5):
                    publisher.publish_async(b"{}", routing_key=queue.name, message_id=str(i), done=outcomes.done_for(i))
                assert outcomes.wait(60), "a message waits for ever for a broker that does not come back"
            finally:
                rabbit.start_app()
            publisher.publish(b"{}", routing_key=queue.name, message_id="after")  # raises if it did not resume
            counts = publisher.counts
        finally:
            publisher.close()
        arrived = drain(rabbit.url, queue)
    failures = [exc for (exc,) in outcomes.by_message.values()]
    assert all(exc is not None and not nacked(exc) for exc in failures), failures
    assert counts.failed == 5
    assert arrived == ["before", "after"]
