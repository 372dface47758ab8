"""A reply the broker nacks is published again by the worker, and its command stays unacked until the broker
has taken the reply: the worker publishes replies on its consuming connection and acks by their confirms.

The nack comes on demand from the shared broker: the orchestrator's reply queue (a foreign orchestrator on
plain kombu) holds one message and rejects publishes beyond it, and the test makes room after the first nack.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from kombu import Connection, Exchange, Producer, Queue

from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.processes import wait_for

pytestmark = pytest.mark.broker

PING = b'{"handler": "SystemHandler", "command": "ping", "data": {}}'


def unacked(queue: str) -> int:
    found = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in found.stdout.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"{queue} is not listed")


def test_a_nacked_reply_is_published_again_and_its_command_is_acked_only_once_the_reply_is_taken(tmp_path, caplog):
    url = require_broker("amqp", AMQP_URL)
    host = unique("kvt-rnack-")
    host_queue = f"kvmworker.{host}"
    replies = Queue(unique("kvt-rnack-replies-"), Exchange(""), durable=False, auto_delete=False,
                    queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})  # fmt: skip
    running = start_worker(Settings(host=host, broker=url, state_dir=tmp_path / "state"))
    try:
        assert running.worker.consuming.wait(15), "the worker did not start consuming"
        with Connection(url) as conn:
            channel = conn.channel()
            replies.bind(channel).declare()
            producer = Producer(channel)
            sent = [str(uuid.uuid4()) for _ in range(2)]
            for msg_id in sent:
                producer.publish(
                    PING,
                    routing_key=host_queue,
                    content_type="application/json",
                    content_encoding="utf-8",
                    message_id=msg_id,
                    correlation_id=msg_id,
                    reply_to=replies.name,
                )
            # the first reply fills the queue; the second is nacked and sent again after a pause
            assert wait_for(lambda: "nacked the reply" in caplog.text, 15), "no reply was nacked"
            assert unacked(host_queue) == 1, "the command was acked before the broker took its reply"

            first = channel.basic_get(replies.name, no_ack=True)  # room for the second
            assert first is not None and first.properties["correlation_id"] == sent[0]

            second = []
            assert wait_for(lambda: second.append(channel.basic_get(replies.name, no_ack=True)) or second[-1], 20)
            assert second[-1].properties["correlation_id"] == sent[1]
            assert json.loads(second[-1].body)["code"] == 0
            assert wait_for(lambda: unacked(host_queue) == 0, 15), "the command was not acked after its reply"
            assert channel.basic_get(replies.name, no_ack=True) is None, "a reply was published twice"
    finally:
        assert running.stop(timeout=15)
        delete_host_queue(url, host)
        with Connection(url) as conn:
            conn.default_channel.queue_delete(replies.name)
