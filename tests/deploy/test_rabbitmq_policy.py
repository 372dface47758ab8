"""The RabbitMQ set-up docs/deploy.md prescribes, run as written against the local broker.

Each test gets a vhost of its own (``kvt…``), so nothing else on the broker is touched; the commands
are read from the document, so the document cannot drift from what was tested.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue

from kvmworker.client import Client
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.names import command_exchange, host_queue, reply_queue
from tests.conftest import AMQP_URL, broker_reachable
from tests.deploy.conftest import DEPLOY_DOC

DOC_VHOST = "kvmworker"
DEAD_LETTER_EXCHANGE = "kvmworker-dlx"
DEAD_LETTER_QUEUE = "kvmworker-dead-letters"

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def documented(prefix: str) -> list[str]:
    """The one command line of docs/deploy.md that starts with ``prefix``, as argv."""
    lines = [line.strip() for line in DEPLOY_DOC.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"docs/deploy.md should have exactly one line starting {prefix!r}: {lines}"
    return shlex.split(lines[0])


def in_vhost(argv: list[str], vhost: str) -> list[str]:
    """The documented command with its vhost (``-p kvmworker`` or add_vhost's argument) replaced."""
    return [
        vhost if word == DOC_VHOST and i and argv[i - 1] in ("-p", "add_vhost") else word for i, word in enumerate(argv)
    ]


def for_user(argv: list[str], vhost: str, user: str, password: str) -> list[str]:
    """add_user / set_permissions as documented, for a test's own vhost, user and password."""
    argv = in_vhost(argv, vhost)
    if argv[1] == "add_user":
        return [*argv[:2], user, password]
    return [*argv[:4], user, *argv[5:]]


def rabbitmqctl(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: the documented commands need it")
    if not broker_reachable(AMQP_URL):
        if os.environ.get("CI"):
            pytest.fail(f"no RabbitMQ at {AMQP_URL}; .ci/run should have started it")
        pytest.skip(f"no RabbitMQ at {AMQP_URL} (start it with .ci/services.sh)")
    name = f"kvt{uuid.uuid4().hex[:8]}"
    rabbitmqctl(in_vhost(documented("rabbitmqctl add_vhost"), name))
    try:
        user = Connection(AMQP_URL).userid
        rabbitmqctl(["rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"])
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=120)


def connect(vhost: str) -> Connection:
    # clone(): a vhost passed next to a URL would lose to the URL's own.
    conn = Connection(AMQP_URL).clone(virtual_host=vhost)
    assert conn.virtual_host == vhost
    return conn


@pytest.fixture
def connection(vhost: str) -> Iterator[Connection]:
    with connect(vhost) as conn:
        yield conn


@pytest.fixture
def host() -> str:
    return f"kvt-node-{uuid.uuid4().hex[:8]}"


def declare_dead_letters(conn: Connection) -> Queue:
    """What the document's rabbitmqadmin lines declare (rabbitmqadmin needs the management plugin)."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True)
    queue = Queue(DEAD_LETTER_QUEUE, exchange=exchange, durable=True)
    queue(conn.default_channel).declare()
    return queue


def queues(vhost: str) -> dict[str, dict[str, str]]:
    out = rabbitmqctl(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", "type", "policy"])
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {row[0]: {"type": row[1], "policy": row[2] if len(row) > 2 else ""} for row in rows}


def test_the_documented_dead_letter_names_are_the_ones_the_policy_uses():
    policy = documented("rabbitmqctl set_policy")
    definition = json.loads(policy[-1])
    assert definition["dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
    doc = DEPLOY_DOC.read_text()
    assert f"declare exchange name={DEAD_LETTER_EXCHANGE} type=fanout" in doc
    assert f"declare binding source={DEAD_LETTER_EXCHANGE} destination={DEAD_LETTER_QUEUE}" in doc


def test_under_the_documented_policy_host_queues_are_quorum_and_reply_queues_are_left_alone(vhost, connection, host):
    channel = connection.default_channel
    host_queue(host)(channel).declare()
    replies = reply_queue()
    replies(channel).declare()
    rabbitmqctl(in_vhost(documented("rabbitmqctl set_policy"), vhost))

    found = queues(vhost)
    assert found[f"kvmworker.{host}"] == {"type": "quorum", "policy": "kvmworker-commands"}
    assert found[replies.name] == {"type": "classic", "policy": ""}


def test_a_restarted_worker_declares_its_quorum_queue_again_without_error(vhost, connection, host):
    host_queue(host)(connection.default_channel).declare()
    with connect(vhost) as again:
        host_queue(host)(again.default_channel).declare()
    assert queues(vhost)[f"kvmworker.{host}"]["type"] == "quorum"


def test_a_command_returned_more_often_than_the_delivery_limit_is_dead_lettered(vhost, connection, host):
    dead = declare_dead_letters(connection)
    queue = host_queue(host)
    queue(connection.default_channel).declare()
    rabbitmqctl(in_vhost(documented("rabbitmqctl set_policy"), vhost))
    limit = json.loads(documented("rabbitmqctl set_policy")[-1])["delivery-limit"]
    body = json.dumps({"command": "ping", "handler": "SystemHandler", "data": {}})
    producer = connection.Producer(exchange=command_exchange(), routing_key=host)
    producer.publish(body, content_type="application/json", content_encoding="utf-8", message_id="kvt-poison")

    deliveries, dead_message = 0, None
    deadline = time.monotonic() + 30
    # Quorum queues commit through Raft: a get right after a publish or a reject may find nothing yet.
    while dead_message is None and deliveries <= 3 * limit and time.monotonic() < deadline:
        message = queue(connection.default_channel).get(no_ack=False)
        if message is not None:
            deliveries += 1
            message.reject(requeue=True)  # what a worker dying mid-command amounts to
        dead_message = dead(connection.default_channel).get(no_ack=True)
        time.sleep(0.02)

    assert dead_message is not None and json.loads(dead_message.body) == json.loads(body)
    assert deliveries == limit + 1
    assert dead_message.headers["x-first-death-reason"] == "delivery_limit"


@pytest.fixture
def fleet_user(vhost: str) -> Iterator[tuple[str, str]]:
    """A broker user with exactly the documented rights on the test's vhost."""
    user, password = f"kvt{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl(for_user(documented("rabbitmqctl add_user"), vhost, user, password))
    try:
        rabbitmqctl(for_user(documented("rabbitmqctl set_permissions"), vhost, user, password))
        yield user, password
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=120)


def as_user(vhost: str, user: str, password: str) -> Connection:
    return Connection(AMQP_URL).clone(userid=user, password=password, virtual_host=vhost)


def test_a_worker_and_a_client_need_no_more_than_the_documented_rights(vhost, fleet_user, host, tmp_path):
    url = as_user(vhost, *fleet_user).as_uri(include_password=True)
    running = start_worker(Settings(host=host, broker_url=url, state_dir=tmp_path / "state"))
    try:
        assert running.worker.connected.wait(15), "the worker did not connect with the documented rights"
        with Client(url) as client:
            reply = client.call(host, "SystemHandler", "ping", {}, timeout=15)
    finally:
        running.stop(timeout=10)
    assert (reply.code, reply.data["host"]) == (0, host)


def test_the_documented_rights_refuse_names_outside_kvmworker(vhost, fleet_user):
    with as_user(vhost, *fleet_user) as conn, pytest.raises(Exception, match="ACCESS_REFUSED"):
        Queue("someone-elses-queue", durable=True)(conn.channel()).declare()
