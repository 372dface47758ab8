"""A publish the broker nacks is sent again, the same message with the same msg_id, until it is taken.

RabbitMQ nacks publishes while a quorum queue elects its leader (tests/faults/test_cluster.py kills that node);
here the nack comes on demand from the shared broker: a policy limits the host's queue to one message and
rejects publishes beyond it, and the test makes room after the first nack.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
from kombu import Connection

from kvmworker.client import CONFIRMED, Client
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.processes import wait_for

pytestmark = pytest.mark.broker


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def test_a_nacked_command_is_published_again_with_the_same_msg_id_once_the_queue_has_room(caplog):
    url = require_broker("amqp", AMQP_URL)
    host = unique("kvt-nack-")
    policy = host
    rabbitmqctl(
        "set_policy", policy, f"^kvmworker\\.{host}$", json.dumps({"max-length": 1, "overflow": "reject-publish"})
    )
    try:
        time.sleep(1)  # policies apply asynchronously
        with Client(url) as client:
            first = client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {}}, timeout=30)
            assert not first.future.done(), "the first command was not taken"

            def make_room() -> None:  # after the second publish has been nacked at least once
                with Connection(url) as conn:
                    deadline = time.monotonic() + 10
                    while "nacked" not in caplog.text and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert conn.default_channel.basic_get(f"kvmworker.{host}", no_ack=True) is not None

            room = threading.Thread(target=make_room)
            room.start()
            second = client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {}}, timeout=30)
            room.join(15)
            # submit returns at once; the publisher sends the nacked command again until the broker takes it
            assert wait_for(lambda: second.stage == CONFIRMED or second.future.done(), 20)
            assert not second.future.done(), second.future.result().data  # no -1 "did not confirm"
            assert "nacked" in caplog.text and second.msg_id in caplog.text
            with Connection(url) as conn:
                waiting = conn.default_channel.basic_get(f"kvmworker.{host}", no_ack=True)
                assert waiting is not None and waiting.properties["message_id"] == second.msg_id
                assert conn.default_channel.basic_get(f"kvmworker.{host}", no_ack=True) is None, "published twice"
    finally:
        rabbitmqctl("clear_policy", policy)
        delete_host_queue(url, host)
