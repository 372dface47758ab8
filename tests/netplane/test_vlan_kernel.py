"""VLAN networks on the real kernel: made for real where the kernel has 8021q, refused cleanly where not."""

from __future__ import annotations

import os

import pytest

from kvmworker.handlers.system import SystemHandler
from kvmworker.netplane.naming import bridge_name, network_alias
from tests.netplane.conftest import DOCUMENTED_EXAMPLE, caller

pytestmark = pytest.mark.netlink
BRIDGE = bridge_name(DOCUMENTED_EXAMPLE["network_id"])


@pytest.fixture
def vlan_support(plane) -> dict:
    return plane.vlan_support()


def test_the_vlan_probe_creates_nothing_and_capabilities_report_it(plane, kernel, vlan_support):
    before = kernel.links()
    system = SystemHandler("h", lambda: {}, {"vlan": plane.vlan_support})
    reply = caller(system)("SystemHandler", "capabilities")
    assert reply.data["features"]["vlan"] == vlan_support
    assert set(vlan_support) <= {"available", "reason"}
    assert kernel.links() == before


@pytest.mark.needs_8021q
def test_with_8021q_the_documented_example_makes_a_real_vlan_enslaved_to_the_bridge(call, kernel, vlan_support):
    if not vlan_support["available"]:
        if os.environ.get("KVT_REQUIRE_8021Q"):
            pytest.fail(f"{vlan_support['reason']}, yet this stage must run on a kernel with 8021q")
        pytest.skip(f"{vlan_support['reason']}; the VLAN logic is tested against pyroute2's mock netlink instead")
    assert call("NetworkHandler", "create", DOCUMENTED_EXAMPLE).code == 0
    sub = kernel.link("ens224.1001")
    assert sub["linkinfo"]["info_kind"] == "vlan" and sub["linkinfo"]["info_data"]["id"] == 1001
    assert sub["link"] == "ens224" and sub["master"] == BRIDGE and "UP" in sub["flags"]
    assert sub["ifalias"] == network_alias(DOCUMENTED_EXAMPLE["network_id"])
    assert call("NetworkHandler", "delete", {"network_id": DOCUMENTED_EXAMPLE["network_id"]}).code == 0
    assert {"ens224.1001", BRIDGE}.isdisjoint(kernel.links())


def test_without_8021q_the_documented_example_is_30004_and_leaves_no_bridge(call, kernel, vlan_support):
    if vlan_support["available"]:
        pytest.skip("this kernel supports VLAN links; the refusal cannot be seen here")
    reply = call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    assert reply.code == 30004 and reply.msg == "不支持的设备操作"
    assert "creating vlan ens224.1001" in reply.data["detail"] and "Unknown device type" in reply.data["detail"]
    links = kernel.links()
    assert BRIDGE not in links and "ens224.1001" not in links
    assert call("NetworkHandler", "list").data == {"networks": []}
