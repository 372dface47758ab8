"""``ConsumeLoop`` on the shared RabbitMQ: what it does when the broker closes its connection, when a callback
fails, and when it stops with messages still in flight. Only this test's own connection is closed (found by
its local port in ``rabbitmqctl list_connections``)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from typing import Any

import pytest
from kombu import Connection, Consumer, Message, Producer, Queue

from kvmworker.transport.connection import open_connection
from kvmworker.transport.consuming import ConsumeLoop, Consuming
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.processes import wait_for

pytestmark = pytest.mark.broker
log = logging.getLogger("kvt.consume-loop")


class Recorder(Consuming):
    """Consumes one queue; records what the loop told it, and the local port of each connection it got."""

    what = "test consumer"

    def __init__(self, queue: Queue, on_message=None):
        self.queue = queue
        self.bodies: list[bytes] = []
        self.ups: list[bool] = []  # ``again`` of each up()
        self.downs = 0
        self.ports: list[int] = []
        self.in_flight = 0
        self.drains_while_stopping = 0
        self.stopping = threading.Event()
        self._on_message = on_message or self.bodies_append

    def bodies_append(self, message: Message) -> None:
        self.bodies.append(message.body)

    def start(self, conn: Connection, channel: Any) -> Consumer:
        consumer = Consumer(channel, queues=[self.queue], on_message=self._on_message, no_ack=True)
        consumer.consume()
        return consumer

    def up(self, conn: Connection, again: bool) -> None:
        self.ports.append(conn.connection.sock.getsockname()[1])
        self.ups.append(again)

    def down(self) -> None:
        self.downs += 1

    def busy(self) -> bool:
        self.drains_while_stopping += 1
        return self.in_flight > 0


@contextlib.contextmanager
def running(recorder: Recorder):
    url = require_broker("amqp", AMQP_URL)
    loop = ConsumeLoop(open_connection(url), recorder, log=log, stopping=recorder.stopping, first_pause=0.1)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: recorder.ups, 15), "the loop never consumed"
        yield thread
    finally:
        recorder.stopping.set()
        recorder.in_flight = 0
        thread.join(10)
        with Connection(url) as conn, contextlib.suppress(*conn.channel_errors):
            recorder.queue.bind(conn.channel()).delete()


def publish(queue: Queue, body: bytes) -> None:
    with Connection(AMQP_URL) as conn:
        Producer(conn.channel()).publish(body, routing_key=queue.name, declare=[queue])


def close_connection_on_port(port: int) -> None:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "peer_port", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pids = [pid for pid, peer in (line.split() for line in out.splitlines() if line.strip()) if peer == str(port)]
    assert len(pids) == 1, out
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pids[0], "kvt: closed by the test"], check=True)


def queue_of_this_test() -> Queue:
    # not a "kvt." prefix: other test sessions sweep those when they end
    return Queue(unique("kvt-loop-"), durable=False, auto_delete=False)


def test_a_connection_the_broker_closes_is_logged_and_the_loop_consumes_again_on_a_new_one(caplog):
    recorder = Recorder(queue_of_this_test())
    with caplog.at_level(logging.WARNING, log.name), running(recorder) as thread:
        publish(recorder.queue, b"before")
        assert wait_for(lambda: recorder.bodies == [b"before"], 10)
        close_connection_on_port(recorder.ports[0])
        assert wait_for(lambda: len(recorder.ups) == 2, 15), "the loop did not consume again"
        publish(recorder.queue, b"after")
        assert wait_for(lambda: recorder.bodies == [b"before", b"after"], 10)
        assert thread.is_alive()
    assert recorder.ups == [False, True] and recorder.ports[0] != recorder.ports[1]
    assert recorder.downs == 2  # the lost connection, and the stop
    (warning,) = [r for r in caplog.records if r.name == log.name]
    assert warning.levelno == logging.WARNING and "test consumer stopped (" in warning.getMessage()
    assert "CONNECTION_FORCED" in warning.getMessage() and "reconnecting in 0.1 s" in warning.getMessage()


def test_a_callback_that_raises_is_logged_with_its_traceback_and_the_loop_outlives_it(caplog):
    def fail_once(message: Message) -> None:
        if message.body == b"poison" and not failed:
            failed.append(message.body)
            raise RuntimeError("a bug in the callback")
        recorder.bodies.append(message.body)

    failed: list[bytes] = []
    recorder = Recorder(queue_of_this_test(), on_message=fail_once)
    with caplog.at_level(logging.WARNING, log.name), running(recorder):
        publish(recorder.queue, b"poison")
        assert wait_for(lambda: len(recorder.ups) == 2, 15), "the loop did not consume again after the failure"
        publish(recorder.queue, b"after")
        assert wait_for(lambda: b"after" in recorder.bodies, 10)
    (error,) = [r for r in caplog.records if r.name == log.name]
    assert error.levelno == logging.ERROR and error.exc_info is not None
    assert "a bug in the callback" in error.getMessage()


def test_on_stop_it_stops_consuming_and_drains_on_while_messages_are_in_flight():
    recorder = Recorder(queue_of_this_test())
    with running(recorder) as thread:
        recorder.in_flight = 1
        recorder.stopping.set()
        time.sleep(0.5)  # it keeps draining (and asking) while the message is in flight
        assert thread.is_alive() and recorder.drains_while_stopping > 1
        publish(recorder.queue, b"after the stop")
        recorder.in_flight = 0
        thread.join(10)
        assert not thread.is_alive()
    assert recorder.bodies == [], "it consumed after the stop"
    assert recorder.downs == 1
