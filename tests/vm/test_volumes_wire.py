"""StorageHandler as a foreign orchestrator reaches it: plain kombu to a worker on RabbitMQ, on the real libvirtd."""

from __future__ import annotations

import os
import subprocess

import pytest

from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import AMQP_URL, require_broker, unique
from tests.trust.wire import RawPublisher
from tests.vm.conftest import SYSTEM_URI
from tests.vm.test_volumes import image_info, pool, pool_dir  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.broker, pytest.mark.netlink]


@pytest.fixture
def wire(tmp_path, pool):  # noqa: F811
    """A worker in a network namespace of its own (its netlink side touches nothing), libvirt on qemu:///system."""
    if os.geteuid() != 0:
        pytest.skip("the worker runs in a network namespace of its own, which needs root")
    url = require_broker("amqp", AMQP_URL)
    netns = unique("kvt-st-")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    (tmp_path / "images").mkdir()
    config = Settings(
        host=unique("kvt-st-host-"),
        broker_url=url,
        state_dir=tmp_path / "state",
        netns=netns,
        libvirt_uri=SYSTEM_URI,
        physical_interfaces=["kvtst-none"],
        storage_dirs=[tmp_path / "images"],
        storage_pool=pool,
    )
    try:
        running = start_worker(config)
        assert running.worker.connected.wait(15), "worker did not connect to the broker"
        publisher = RawPublisher(url, config.host)
        yield publisher
        publisher.close()
        running.stop(timeout=10)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def ask(raw: RawPublisher, command: str, **data) -> dict:
    [reply] = raw.wait(raw.send(raw.message({"handler": "StorageHandler", "command": command, "data": data})), 30)
    return reply.body


def test_over_the_bus_a_base_is_cloned_linked_and_full_refused_while_backing_and_then_deleted(wire, pool_dir):  # noqa: F811
    assert ask(wire, "volume_create", name="base.qcow2", size_gib=0.0625)["code"] == 0
    linked = ask(wire, "volume_clone", name="kvt-linked.qcow2", source="base.qcow2")
    assert linked["code"] == 0 and linked["data"]["backing"]["format"] == "qcow2", linked
    assert image_info(linked["data"]["path"])["backing-filename-format"] == "qcow2"
    full = ask(wire, "volume_clone", name="kvt-full.qcow2", source="base.qcow2", linked=False)
    assert full["code"] == 0 and full["data"]["backing"] is None, full
    listed = {v["name"]: v for v in ask(wire, "volumes")["data"]["volumes"]}
    assert listed["base.qcow2"]["clones"] == ["kvt-linked.qcow2"]
    refused = ask(wire, "volume_delete", name="base.qcow2")
    assert refused["code"] == 30004 and refused["msg"] == "不支持的设备操作" and refused["data"]["clones"]
    assert ask(wire, "volume_delete", name="kvt-linked.qcow2")["code"] == 0
    assert ask(wire, "volume_delete", name="base.qcow2")["code"] == 0
    missing = ask(wire, "volume_delete", name="base.qcow2")
    assert missing["code"] == 30010 and missing["msg"] == "存储卷不存在"
    assert sorted(os.listdir(pool_dir)) == ["kvt-full.qcow2"]
