"""VLAN networks against pyroute2's mock netlink (this machine's kernel has no 8021q).

The handlers run unchanged: real netlink messages go to ``MockKernel`` (pyroute2's ``IPEngine``,
completed in ``mock_kernel.py``), and the tests read its link table directly.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from kvmworker.netplane.naming import bridge_name, network_alias
from kvmworker.netplane.networks import subinterface_name
from tests.netplane.conftest import DOCUMENTED_EXAMPLE, caller, flat, handlers, make_plane
from tests.netplane.mock_kernel import MockKernel, mock_netlink

NETWORK_ID = DOCUMENTED_EXAMPLE["network_id"]
BRIDGE = bridge_name(NETWORK_ID)


def vlan(vlan_id: int | str, nic: str = "ens224", network_id: str | None = None, **extra):
    network_id = network_id or str(uuid.uuid4())
    return {"network_id": network_id, "network_type": "vlan", "physical_interface": nic, "vlan_id": vlan_id, **extra}


class Machine:
    """A mock kernel, the store in a state directory, and the handlers over them."""

    def __init__(self, state_dir: Path, kernel: MockKernel):
        self.kernel = kernel
        netlink = mock_netlink(kernel)
        self.plane = make_plane(None, state_dir, ["ens224", "ens225", "enp94s0f1np1abc"], opener=lambda ns: netlink)
        self.network, *rest = handlers(self.plane)
        self.call = caller(self.network, *rest)

    def link(self, name: str):
        return self.kernel.link(name)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "state", MockKernel(("ens224", "ens225", "enp94s0f1np1abc")))


def test_the_documented_example_makes_a_bridge_and_a_tagged_vlan_enslaved_to_it(machine):
    reply = machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    assert reply.code == 0, reply.data
    assert reply.data["name"] == BRIDGE == "brq5b0503ba-1a"
    bridge, sub, nic = machine.link(BRIDGE), machine.link("ens224.1001"), machine.link("ens224")
    assert bridge.kind == "bridge" and bridge.flags & 1
    assert (sub.kind, sub.vlan_id, sub.link, sub.master) == ("vlan", 1001, nic.index, bridge.index)
    assert sub.flags & 1 and nic.flags & 1
    tag = network_alias(NETWORK_ID)
    assert machine.kernel.aliases[bridge.index] == tag == machine.kernel.aliases[sub.index]
    assert nic.index not in machine.kernel.aliases and nic.master == 0


def test_the_documented_example_sent_again_answers_the_same_and_makes_nothing_new(machine):
    first = machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    links = len(machine.kernel.database["links"])
    again = machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE | {"vlan_id": 1001})
    assert again.code == 0 and again.data == first.data
    assert len(machine.kernel.database["links"]) == links


def test_a_vlan_id_is_used_once_per_interface_and_freely_on_another(machine):
    assert machine.call("NetworkHandler", "create", vlan(10)).code == 0
    reused = machine.call("NetworkHandler", "create", vlan("10"))
    assert reused.code == 30006 and reused.data["field"] == "vlan_id" and "VLAN 10 on ens224" in reused.data["detail"]
    assert machine.call("NetworkHandler", "create", vlan(11)).code == 0
    assert machine.call("NetworkHandler", "create", vlan(10, "ens225")).code == 0


def test_flat_and_vlan_networks_never_share_an_interface(machine):
    assert machine.call("NetworkHandler", "create", vlan(10)).code == 0
    flat_on_vlan = machine.call("NetworkHandler", "create", flat(str(uuid.uuid4())))
    assert flat_on_vlan.code == 30006 and "cannot share" in flat_on_vlan.data["detail"]
    assert machine.call("NetworkHandler", "create", flat(str(uuid.uuid4()), "ens225")).code == 0
    vlan_on_flat = machine.call("NetworkHandler", "create", vlan(10, "ens225"))
    assert vlan_on_flat.code == 30006 and "flat network" in vlan_on_flat.data["detail"]


def test_delete_removes_the_subinterface_and_the_bridge_and_keeps_the_interface(machine):
    machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    reply = machine.call("NetworkHandler", "delete", {"network_id": NETWORK_ID})
    assert reply.code == 0
    assert [op["name"] for op in reply.data["operations"]] == ["ens224.1001", BRIDGE]
    assert machine.link("ens224.1001") is None and machine.link(BRIDGE) is None
    assert machine.link("ens224") is not None


def test_a_subinterface_name_over_15_bytes_is_shortened_the_same_way_every_time(machine):
    name = subinterface_name("enp94s0f1np1abc", 4094)
    assert len(name) == 15 and name.endswith(".4094") and name == subinterface_name("enp94s0f1np1abc", 4094)
    assert name != subinterface_name("enp94s0f1np1abd", 4094)
    assert subinterface_name("ens224", 1001) == "ens224.1001"
    reply = machine.call("NetworkHandler", "create", vlan(4094, "enp94s0f1np1abc"))
    assert reply.code == 0 and reply.data["subinterface"] == name
    assert machine.link(name).vlan_id == 4094


def test_an_mtu_goes_to_the_subinterface_and_the_bridge(machine):
    reply = machine.call("NetworkHandler", "create", vlan(20, mtu=1450))
    assert reply.code == 0
    assert machine.link("ens224.20").mtu == 1450 and machine.link(reply.data["name"]).mtu == 1450


def test_dry_run_lists_the_vlan_operations_and_makes_nothing(machine):
    links = len(machine.kernel.database["links"])
    reply = machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE, dry_run=True)
    assert reply.data["dry_run"] is True
    assert reply.data["plan"][1] == {
        "op": "link_add",
        "name": "ens224.1001",
        "kind": "vlan",
        "alias": network_alias(NETWORK_ID),
        "state": "up",
        "master": BRIDGE,
        "link": "ens224",
        "vlan_id": 1001,
    }
    assert len(machine.kernel.database["links"]) == links


def test_without_8021q_a_vlan_network_is_30004_naming_the_kernel_and_leaves_no_bridge(tmp_path):
    machine = Machine(tmp_path, MockKernel(vlan=False))
    reply = machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    assert reply.code == 30004
    assert "creating vlan ens224.1001" in reply.data["detail"] and "kernel" in reply.data["detail"]
    assert machine.link(BRIDGE) is None
    assert machine.call("NetworkHandler", "list").data == {"networks": []}


def test_list_reports_a_subinterface_lost_behind_the_workers_back(machine):
    machine.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    machine.kernel.database["links"].remove(machine.link("ens224.1001"))
    (state,) = machine.call("NetworkHandler", "list").data["networks"]
    assert state["state"] == "drift" and state["drift"] == ["subinterface ens224.1001 is missing"]


def test_after_a_reboot_on_start_puts_the_vlan_network_back_and_logs_it(tmp_path, caplog):
    before = Machine(tmp_path, MockKernel())
    assert before.call("NetworkHandler", "create", DOCUMENTED_EXAMPLE).code == 0
    rebooted = MockKernel()  # a fresh kernel: only the interfaces
    after = Machine(tmp_path, rebooted)
    with caplog.at_level(logging.WARNING, logger="kvmworker.network"):
        after.network.on_start()
    assert "restored" in caplog.text and NETWORK_ID in caplog.text
    sub, bridge = rebooted.link("ens224.1001"), rebooted.link(BRIDGE)
    assert sub.master == bridge.index and sub.vlan_id == 1001
    (state,) = after.call("NetworkHandler", "list").data["networks"]
    assert state["state"] == "ok" and state["restored_at_start"] == [
        f"bridge {BRIDGE} is missing",
        "subinterface ens224.1001 is missing",
    ]
