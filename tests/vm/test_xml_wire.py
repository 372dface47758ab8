"""Hostile domain XML published with plain kombu to a worker on RabbitMQ, as a foreign orchestrator would."""

from __future__ import annotations

import json
import os

import pytest

from kvmworker.runtime import start_worker
from tests.conftest import AMQP_URL, require_broker
from tests.trust.hostile import fuzz_settings
from tests.trust.wire import RawPublisher
from tests.vm.conftest import vm_name
from tests.vm.hostile_xml import CASES, legit_xml

pytestmark = [pytest.mark.broker, pytest.mark.netlink]
OVER_THE_WIRE = [
    "namespaced-attribute",
    "block-disk",
    "hostdev",
    "serial-file-into-cron",
    "qemu-commandline",
    "os-loader",
    "forged-worker-metadata",
    "dtd-with-an-external-entity",
]


@pytest.fixture
def worker(tmp_path):
    """A worker on libvirt's test driver in a network namespace of its own, reached over real RabbitMQ."""
    if os.geteuid() != 0:
        pytest.skip("the worker runs in a network namespace of its own, which needs root")
    url = require_broker("amqp", AMQP_URL)
    with fuzz_settings(tmp_path, broker_url=url) as config:
        running = start_worker(config)
        assert running.worker.connected.wait(15), "worker did not connect to the broker"
        publisher = RawPublisher(url, config.host)
        publisher.images = config.storage_dirs[0]
        yield publisher
        publisher.close()
        running.stop(timeout=10)


def define(raw: RawPublisher, xml: str, dry_run: bool = False) -> dict:
    body = {"handler": "VmHandler", "command": "define", "data": {"xml": xml}, "dry_run": dry_run}
    [reply] = raw.wait(raw.send(raw.message(body)), 15)
    return reply.body


def info(raw: RawPublisher, name: str) -> int:
    [reply] = raw.wait(raw.send(raw.message({"handler": "VmHandler", "command": "info", "data": {"name": name}})), 15)
    return reply.body["code"]


def test_hostile_documents_over_the_bus_are_refused_naming_the_element_and_a_legitimate_one_is_defined(worker):
    for case in OVER_THE_WIRE:
        name = vm_name()
        reply = define(worker, CASES[case].build(name, "test", worker.images))
        assert reply["code"] == 30006, (case, reply)
        assert reply["data"].get("field") == CASES[case].field, (case, reply)
        assert info(worker, name) == 30007, case

    name = vm_name()
    assert define(worker, legit_xml(name, "test", worker.images))["code"] == 0
    assert info(worker, name) == 0
    undefine = {"handler": "VmHandler", "command": "undefine", "data": {"name": name}}
    assert worker.wait(worker.send(worker.message(undefine)), 15)[0].body["code"] == 0


def test_a_dry_run_reply_over_the_bus_never_carries_the_vnc_password(worker):
    reply = define(worker, legit_xml(vm_name(), "test", worker.images, password="kvtW1re!"), dry_run=True)
    assert reply["code"] == 0, reply
    assert "kvtW1re!" not in json.dumps(reply)
