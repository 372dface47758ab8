"""A command slower than RabbitMQ's consumer timeout: the broker closes the worker's channel and requeues the message.

The node here has ``consumer_timeout = 5000`` and checks it every second (``channel_tick_interval``; by default
only every minute). The worker must reconnect, keep serving, and not run the command a second time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from tests.faults.brokers import PrivateRabbit, private_rabbit, require_private_brokers
from tests.support.handlers import count_of
from tests.support.processes import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
CONSUMER_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    require_private_brokers()
    config = f"consumer_timeout = {CONSUMER_TIMEOUT_S * 1000}\n"
    with private_rabbit("kvt-ctimeout", 5683, config, "[{rabbit, [{channel_tick_interval, 1000}]}].") as node:
        yield node


def test_a_command_slower_than_the_consumer_timeout_runs_once_and_its_caller_is_answered(rabbit, worker):
    slow = {"handler": "ProbeHandler", "command": "count", "data": {"name": "slow", "sleep": CONSUMER_TIMEOUT_S + 4}}
    with Client(rabbit.url) as client:
        started = time.monotonic()
        reply = client.call(worker.host, slow["handler"], slow["command"], slow["data"], timeout=60)
        took = time.monotonic() - started
        assert reply.code == Code.OK, (reply, worker.log())
        time.sleep(CONSUMER_TIMEOUT_S + 2)  # room for a second timeout, had the message come back again
        assert count_of(worker.effects, "slow") == 1, "the command ran again after the broker took it back"
        assert wait_for(lambda: rabbit.queue_depth(f"kvmworker.{worker.host}") == 0, 10), "left in the queue"
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
    assert "timed out" in worker.log() or "PRECONDITION_FAILED" in worker.log(), "the broker never closed the channel"
    assert worker.current.poll() is None
    print(f"\nconsumer timeout: answered after {took:.1f} s, ran {count_of(worker.effects, 'slow')} time(s)")


def test_a_consumer_timeout_does_not_hold_up_commands_sent_meanwhile(rabbit, worker):
    slow = {"handler": "ProbeHandler", "command": "count", "data": {"name": "slow2", "sleep": CONSUMER_TIMEOUT_S + 3}}
    with Client(rabbit.url) as client:
        pending = client.submit(worker.host, slow, timeout=60)
        time.sleep(CONSUMER_TIMEOUT_S + 1.5)  # the broker has closed the channel by now
        pings = [client.call(worker.host, "SystemHandler", "ping", timeout=15).code for _ in range(5)]
        assert pings == [0] * 5
        assert client.wait(pending, 60).code == Code.OK
    assert count_of(worker.effects, "slow2") == 1
    assert os.path.exists(worker.effects)
