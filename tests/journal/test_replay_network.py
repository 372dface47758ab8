"""Replay of a recorded NetworkHandler create, in a namespace of the test's own, over RabbitMQ.

The kernel is read with iproute2, never with the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kvmworker.cli import main
from kvmworker.client import Client
from kvmworker.netplane.naming import bridge_name
from kvmworker.protocol.codes import Code
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import unique

pytestmark = [pytest.mark.netlink, pytest.mark.broker]
NIC = "ens224"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def links(namespace: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(ip("-n", namespace, "-j", "link", "show"))}


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = unique("kvt-jn-")
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", NIC, "type", "veth", "peer", "name", f"{NIC}p")
        yield name
    finally:
        ip("netns", "del", name)


@pytest.fixture
def network_worker(amqp_url, namespace, tmp_path) -> Iterator[tuple[Settings, Client]]:
    settings = Settings(
        host=unique("kvt-jn-"), broker_url=amqp_url, state_dir=tmp_path / "state", netns=namespace,
        physical_interfaces=[NIC],
    )  # fmt: skip
    running = start_worker(settings)
    try:
        assert running.worker.connected.wait(15)
        with Client(amqp_url) as client:
            yield settings, client
    finally:
        running.stop(timeout=10)


def test_replaying_a_network_create_reproduces_the_reply_and_the_kernel_state(network_worker, namespace, capsys):
    settings, client = network_worker
    network_id, msg_id = str(uuid.uuid4()), str(uuid.uuid4())
    # flat: this machine's kernel may lack 8021q, and the journal does not care which kind it replays
    data = {"network_id": network_id, "network_type": "flat", "physical_interface": NIC}
    created = client.call(settings.host, "NetworkHandler", "create", data, msg_id=msg_id)
    assert created.code == Code.OK, created.data
    bridge = bridge_name(network_id)
    recorded_state = {name: link.get("master") for name, link in links(namespace).items()}
    assert recorded_state[NIC] == bridge
    assert client.call(settings.host, "NetworkHandler", "delete", {"network_id": network_id}).code == Code.OK
    assert bridge not in links(namespace)

    replay = ["replay", msg_id, "--state-dir", str(settings.state_dir), "--broker", settings.broker_url]
    assert main([*replay, "--dry-run"]) == 1  # a plan, not the recorded reply
    assert bridge not in links(namespace)

    assert main([*replay, "--yes"]) == 0
    assert "same reply" in capsys.readouterr().out
    assert {name: link.get("master") for name, link in links(namespace).items()} == recorded_state
