"""The inventory as a caller gets it: through a running worker, the memory:// broker and the client."""

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.host.conftest import unique

COMMANDS = ["cpu", "memory", "storage", "network", "hardware", "services", "summary"]


@pytest.fixture(scope="module")
def worker_and_client(tmp_path_factory):
    host = unique("kvt-host-")
    state = tmp_path_factory.mktemp("state")
    settings = Settings(host=host, broker_url="memory://", state_dir=state, libvirt_uri="test:///default")
    running = start_worker(settings)
    assert running.worker.connected.wait(15), "worker did not connect to the broker"
    try:
        with Client("memory://") as client:
            yield host, client
    finally:
        running.stop(timeout=10)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_over_the_bus(worker_and_client, command):
    host, client = worker_and_client
    reply = client.call(host, "HostHandler", command, timeout=20)
    assert (reply.code, reply.msg) == (Code.OK, "成功"), reply.data
    assert isinstance(reply.data, dict) and reply.data


def test_a_dry_run_of_a_read_only_command_is_the_real_answer(worker_and_client):
    host, client = worker_and_client
    reply = client.call(host, "HostHandler", "memory", dry_run=True, timeout=20)
    assert reply.code == Code.OK and reply.data["ram"]["total"] > 0
