"""Fixtures shared by every suite: brokers, unique names, a running worker, a client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kvmworker.client import Client
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.support.handlers import ProbeHandler

AMQP_URL = os.environ.get("KVMWORKER_TEST_AMQP", "amqp://guest:guest@localhost:5672//")
REDIS_URL = os.environ.get("KVMWORKER_TEST_REDIS", "redis://localhost:6379/0")
BROKERS = {"memory": "memory://", "amqp": AMQP_URL, "redis": REDIS_URL}


def unique(prefix: str = "kvt") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def broker_reachable(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def require_broker(name: str, url: str) -> str:
    """The URL of a broker that answers: in CI a missing one is a failure, elsewhere a stated skip."""
    if not broker_reachable(url):
        if os.environ.get("CI"):
            pytest.fail(f"{name} broker at {url} is not reachable; .ci/run should have started it")
        pytest.skip(f"{name} broker at {url} is not reachable (start it with .ci/services.sh)")
    return url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a kernel without 8021q, ``scripts/test.sh`` runs the VLAN tests in a guest beside this run
    (KVT_GUEST_STAGE=later): here they are deselected rather than skipped, and that stage must pass."""
    if os.environ.get("KVT_GUEST_STAGE") != "later":
        return
    moved = [item for item in items if item.get_closest_marker("needs_8021q")]
    if moved:
        config.hook.pytest_deselected(items=moved)
        items[:] = [item for item in items if not item.get_closest_marker("needs_8021q")]


@pytest.fixture(scope="session", autouse=True)
def remove_test_queues_at_the_end() -> Iterator[None]:
    """Clients declare a durable queue for every host they call, workers or not: tests name their hosts
    ``kvt…``, and what the session left on the shared RabbitMQ and Redis goes when it ends."""
    yield
    if os.environ.get("KVT_IN_GUEST"):
        return  # no broker runs in the guest; its tests delete the queues they made on the host's
    if os.environ.get("KVT_KEEP_QUEUES"):
        return  # several sessions share the brokers (parallel work): a queue of another's restarting worker stays
    rabbitmq_queues = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=60, check=False
    ).stdout.split()
    ours = [name for name in rabbitmq_queues if name.startswith(TEST_QUEUE_PREFIXES)]
    if ours:
        from kombu import Connection

        with Connection(AMQP_URL, connect_timeout=5) as conn:
            for name in ours:
                # another session's exclusive reply queue is locked to its connection, and a queue with a
                # consumer belongs to a session still running (if_unused): that session removes it
                with conn.channel() as channel, contextlib.suppress(*conn.channel_errors):
                    channel.queue_delete(name, if_unused=True)
    _remove_redis_test_queues()


TEST_QUEUE_PREFIXES = ("kvmworker.kvt", "kvt.")


def _remove_redis_test_queues() -> None:
    import redis

    try:
        db = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        for key in db.scan_iter(match="*kvt*"):
            if key.decode().startswith(TEST_QUEUE_PREFIXES):
                db.delete(key)
        for member in db.smembers("_kombu.binding.kvmworker"):
            if member.decode().startswith("kvt"):
                db.srem("_kombu.binding.kvmworker", member)
    except redis.RedisError:
        pass  # no Redis in this run: nothing was left there


@pytest.fixture(params=list(BROKERS), ids=list(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    url = BROKERS[request.param]
    return url if request.param == "memory" else require_broker(request.param, url)


@pytest.fixture
def host() -> str:
    return unique("kvt-host-")


@pytest.fixture
def worker_settings(broker_url: str, host: str, tmp_path) -> Settings:
    return Settings(host=host, broker_url=broker_url, state_dir=tmp_path / "state", workers=8)


@pytest.fixture
def running_worker(worker_settings: Settings, tmp_path) -> Iterator[RunningWorker]:
    counters = tmp_path / "counters"
    counters.mkdir()
    running = start_worker(worker_settings, extra_handlers=[ProbeHandler(counters)])
    assert running.worker.connected.wait(15), "worker did not connect to the broker"
    yield running
    running.stop(timeout=10)
    delete_host_queue(worker_settings.broker_url, worker_settings.host)


@pytest.fixture
def client(broker_url: str) -> Iterator[Client]:
    with Client(broker_url) as c:
        yield c
