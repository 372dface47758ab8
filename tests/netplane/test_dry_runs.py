"""A dry run of every mutating network and device command, on the real kernel: the one reply shape,
``{"dry_run": true, "plan": [...]}``, nothing changed; and the same command for real then succeeds."""

from __future__ import annotations

import json

import pytest

from kvmworker.api.device import DeviceApi
from kvmworker.api.network import NetworkApi
from kvmworker.dispatch.commands import declared
from tests.netplane.conftest import flat

pytestmark = pytest.mark.netlink

NETWORK_ID = "0c1f3a2b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
BRIDGE = {"name": "kvtbr0", "type": "bridge"}
ADDRESS = {"name": "kvtbr0", "address": "10.9.8.7/24"}
# command → (what exists first, the data of the dry run)
CASES = {
    "NetworkHandler.create": ([], flat(NETWORK_ID)),
    "NetworkHandler.delete": ([("NetworkHandler", "create", flat(NETWORK_ID))], {"network_id": NETWORK_ID}),
    "DeviceHandler.create": ([], BRIDGE),
    "DeviceHandler.delete": ([("DeviceHandler", "create", BRIDGE)], {"name": "kvtbr0"}),
    "DeviceHandler.set": ([("DeviceHandler", "create", BRIDGE)], {"name": "kvtbr0", "mtu": 1400, "state": "down"}),
    "DeviceHandler.addr_add": ([("DeviceHandler", "create", BRIDGE)], ADDRESS),
    "DeviceHandler.addr_del": (
        [("DeviceHandler", "create", BRIDGE), ("DeviceHandler", "addr_add", ADDRESS)],
        ADDRESS,
    ),
}


def host_state(kernel, call) -> tuple:
    """What a command may change: each link's tag, MTU, MAC, master, up/down and IPv4 addresses, and the
    remembered networks (an IPv6 link-local address the kernel adds by itself is no change of ours)."""
    links = {
        link["ifname"]: (
            link.get("ifalias"),
            link["mtu"],
            link.get("address"),
            link.get("master"),
            "UP" in link["flags"],
            sorted(a["local"] for a in link["addr_info"] if a["family"] == "inet"),
        )
        for link in json.loads(kernel.ip("-j", "-d", "addr", "show"))
    }
    return links, call("NetworkHandler", "list").data


def test_every_mutating_network_and_device_command_has_a_case_here():
    mutating = {f"{d.handler}.{d.name}" for api in (NetworkApi, DeviceApi) for d in declared(api) if d.spec.mutates}
    assert mutating == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_dry_run_answers_the_plan_changes_nothing_and_the_real_command_then_succeeds(call, kernel, name):
    handler, command = name.split(".")
    prepare, data = CASES[name]
    for step in prepare:
        assert call(*step).code == 0
    before = host_state(kernel, call)
    reply = call(handler, command, data, dry_run=True)
    assert reply.code == 0, reply.data
    assert reply.data["dry_run"] is True and set(reply.data) <= {"dry_run", "plan", "left_alone"}
    assert reply.data["plan"] and all(isinstance(step["op"], str) for step in reply.data["plan"])
    assert host_state(kernel, call) == before
    done = call(handler, command, data)
    assert done.code == 0, done.data
    assert host_state(kernel, call) != before


def test_a_dry_run_is_refused_as_the_command_would_be(call):
    reply = call("DeviceHandler", "delete", {"name": "ens224"}, dry_run=True)  # a "physical" NIC: not the worker's
    assert reply.code == call("DeviceHandler", "delete", {"name": "ens224"}).code == 30004
    assert call("NetworkHandler", "delete", {"network_id": NETWORK_ID}, dry_run=True).code == 30003
