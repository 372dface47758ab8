"""The documented NetworkHandler example and its error cases, sent as raw JSON through a real broker to
a worker started with ``--netns`` on the test's namespace (memory://, RabbitMQ and Redis)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kvmworker.netplane.naming import bridge_name
from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from tests.netplane.conftest import DOCUMENTED_EXAMPLE, NICS
from tests.spine.test_raw_messages import RawCaller

pytestmark = pytest.mark.netlink


@pytest.fixture
def worker(broker_url, host, namespace, state_dir) -> Iterator[RunningWorker]:
    settings = Settings(
        host=host, broker_url=broker_url, state_dir=state_dir, netns=namespace, physical_interfaces=list(NICS)
    )
    running = start_worker(settings)
    assert running.worker.connected.wait(15), "worker did not connect to the broker"
    yield running
    running.stop(timeout=10)


@pytest.fixture
def raw(worker, broker_url, host) -> Iterator[RawCaller]:
    caller = RawCaller(broker_url, host)
    yield caller
    caller.close()


def send(raw: RawCaller, data: dict, command: str = "create") -> dict:
    body = json.dumps({"command": command, "handler": "NetworkHandler", "data": data})
    return raw.reply_for(raw.send(body), timeout=15)


def test_the_documented_example_and_its_error_cases_over_the_broker(raw, kernel):
    bridge = bridge_name(DOCUMENTED_EXAMPLE["network_id"])
    reply = send(raw, DOCUMENTED_EXAMPLE)
    assert set(reply) == {"code", "msg", "data"} and reply["msg"] == Code(reply["code"]).msg
    if reply["code"] == 0:  # a kernel with 8021q
        assert reply["data"]["name"] == bridge and kernel.link("ens224.1001")["master"] == bridge
    else:
        assert reply["code"] == 30004 and bridge not in kernel.links()

    flat = DOCUMENTED_EXAMPLE | {"network_id": "6c0503ba-1af4-11ea-baa2-000c2902e179", "network_type": "flat",
                                 "physical_interface": "ens225", "vlan_id": ""}  # fmt: skip
    made = send(raw, flat)
    assert made == {"code": 0, "msg": "成功", "data": made["data"]} and made["data"]["name"] == "brq6c0503ba-1a"
    assert kernel.link("ens225")["master"] == "brq6c0503ba-1a"
    assert send(raw, flat) == made

    for change, code in [
        ({"network_type": "gre"}, 30001),
        ({"physical_interface": "ens999"}, 30004),  # not among the configured interfaces
        ({"physical_interface": "ens224-but-longer"}, 30005),
        ({"vlan_id": "5000"}, 30006),
        ({"vlan_id": "10x"}, 30006),
        ({"network_id": "5b0503ba"}, 30006),
    ]:
        answer = send(raw, DOCUMENTED_EXAMPLE | change)
        assert (answer["code"], answer["msg"]) == (code, Code(code).msg), (change, answer)
        assert set(answer["data"]) <= {"detail", "field"} and answer["data"]["detail"]
    missing = {k: v for k, v in DOCUMENTED_EXAMPLE.items() if k != "physical_interface"}
    assert send(raw, missing)["code"] == 30003

    assert send(raw, {"network_id": flat["network_id"]}, "delete")["code"] == 0
    assert "master" not in kernel.link("ens225")
