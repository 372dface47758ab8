"""Flat networks on the real kernel, in a namespace of the test's own; the kernel checked with iproute2."""

from __future__ import annotations

import uuid

import pytest

from kvmworker.netplane.naming import bridge_name, network_alias
from tests.netplane.conftest import NICS, caller, flat, handlers, make_plane

pytestmark = pytest.mark.netlink


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_flat_network_is_a_tagged_bridge_holding_the_interface_and_all_of_it_is_up(call, kernel):
    network_id = new_id()
    reply = call("NetworkHandler", "create", flat(network_id))
    assert reply.code == 0, reply.data
    bridge = bridge_name(network_id)
    assert reply.data["name"] == bridge == "brq" + network_id[:11]
    links = kernel.links()
    assert links[bridge]["linkinfo"]["info_kind"] == "bridge"
    assert links[bridge]["ifalias"] == network_alias(network_id)
    assert "UP" in links[bridge]["flags"]
    assert links["ens224"]["master"] == bridge and "UP" in links["ens224"]["flags"]


def test_the_same_create_again_answers_the_same_and_changes_nothing(call, kernel):
    network_id = new_id()
    first = call("NetworkHandler", "create", flat(network_id))
    before = kernel.link(bridge_name(network_id))
    again = call("NetworkHandler", "create", flat(network_id, network_type="FLAT"))
    assert again.code == 0 and again.data == first.data
    assert kernel.link(bridge_name(network_id))["ifindex"] == before["ifindex"]


def test_the_same_network_id_with_other_parameters_is_30006_and_says_what_differs(call):
    network_id = new_id()
    call("NetworkHandler", "create", flat(network_id))
    reply = call("NetworkHandler", "create", flat(network_id, "ens225"))
    assert reply.code == 30006
    assert "physical_interface 'ens225' (it has 'ens224')" in reply.data["detail"]


def test_a_second_flat_network_on_an_interface_is_30006(call, kernel):
    first = new_id()
    call("NetworkHandler", "create", flat(first))
    second = new_id()
    reply = call("NetworkHandler", "create", flat(second))
    assert reply.code == 30006 and first in reply.data["detail"] and "flat" in reply.data["detail"]
    assert reply.data["field"] == "physical_interface"
    assert bridge_name(second) not in kernel.links()


def test_two_network_ids_with_the_same_first_11_characters_cannot_share_a_bridge_name(call):
    first = "5b0503ba-1a00-11ea-baa2-000c2902e179"
    call("NetworkHandler", "create", flat(first))
    reply = call("NetworkHandler", "create", flat("5b0503ba-1aff-11ea-baa2-000c2902e179", "ens225"))
    assert reply.code == 30006 and "first 11 characters" in reply.data["detail"]


def test_an_mtu_goes_to_the_bridge_and_one_above_the_interfaces_mtu_is_30006(call, kernel):
    network_id = new_id()
    assert call("NetworkHandler", "create", flat(network_id, mtu=1400)).code == 0
    assert kernel.link(bridge_name(network_id))["mtu"] == 1400
    too_big = call("NetworkHandler", "create", flat(new_id(), "ens225", mtu=9000))
    assert too_big.code == 30006 and too_big.data["field"] == "mtu"


def test_delete_removes_the_bridge_and_releases_the_interface_which_stays(call, kernel):
    network_id = new_id()
    call("NetworkHandler", "create", flat(network_id))
    reply = call("NetworkHandler", "delete", {"network_id": network_id})
    assert reply.code == 0 and reply.data["name"] == bridge_name(network_id)
    links = kernel.links()
    assert bridge_name(network_id) not in links
    assert "ens224" in links and "master" not in links["ens224"]
    assert call("NetworkHandler", "delete", {"network_id": network_id}).code == 30003
    assert call("NetworkHandler", "show", {"network_id": network_id}).code == 30003


def test_a_missing_interface_is_30003_and_one_outside_the_configured_list_30004(namespace, state_dir, kernel):
    plane = make_plane(namespace, state_dir, [*NICS, "ens9"])
    call = caller(*handlers(plane))
    missing = call("NetworkHandler", "create", flat(new_id(), "ens9"))
    assert missing.code == 30003 and missing.data["field"] == "physical_interface"
    kernel.ip("link", "add", "eth7", "type", "veth", "peer", "name", "eth7p")
    outside = call("NetworkHandler", "create", flat(new_id(), "eth7"))
    assert outside.code == 30004 and "configured" in outside.data["detail"]
    not_given = call("NetworkHandler", "create", {"network_id": new_id(), "network_type": "flat"})
    assert not_given.code == 30003
    plane.close()


def test_without_configuration_only_non_virtual_interfaces_may_carry_networks(namespace, state_dir, kernel):
    plane = make_plane(namespace, state_dir, physical=None)
    call = caller(*handlers(plane))
    veth = call("NetworkHandler", "create", flat(new_id()))
    assert veth.code == 30004 and "virtual (veth)" in veth.data["detail"]
    loopback = call("NetworkHandler", "create", flat(new_id(), "lo"))
    assert loopback.code == 30004 and "loopback" in loopback.data["detail"]
    assert not [name for name in kernel.links() if name.startswith("brq")]
    plane.close()


def test_a_device_with_the_bridge_name_that_is_not_the_networks_is_left_alone(call, kernel):
    network_id = new_id()
    kernel.ip("link", "add", bridge_name(network_id), "type", "bridge")
    reply = call("NetworkHandler", "create", flat(network_id))
    assert reply.code == 30004 and "is not network" in reply.data["detail"]
    assert bridge_name(network_id) in kernel.links()
    assert "master" not in kernel.link("ens224")


def test_an_interface_already_enslaved_elsewhere_is_30004(call, kernel):
    kernel.ip("link", "add", "kvtbr", "type", "bridge")
    kernel.ip("link", "set", "ens224", "master", "kvtbr")
    reply = call("NetworkHandler", "create", flat(new_id()))
    assert reply.code == 30004 and "kvtbr" in reply.data["detail"]
    assert kernel.link("ens224")["master"] == "kvtbr"


def test_a_step_failing_half_way_removes_what_the_command_made(namespace, state_dir, kernel):
    # A bridge cannot be a port of another bridge: the kernel refuses the enslaving step (ELOOP).
    kernel.ip("link", "add", "kvtinner", "type", "bridge")
    plane = make_plane(namespace, state_dir, ["kvtinner"])
    call = caller(*handlers(plane))
    network_id = new_id()
    reply = call("NetworkHandler", "create", flat(network_id, "kvtinner"))
    assert reply.code == 30006 and "changing kvtinner" in reply.data["detail"]
    assert bridge_name(network_id) not in kernel.links()
    assert call("NetworkHandler", "list").data == {"networks": []}
    plane.close()


def test_dry_run_returns_the_netlink_operations_and_changes_nothing(call, kernel):
    network_id = new_id()
    before = kernel.links()
    reply = call("NetworkHandler", "create", flat(network_id, mtu=1400), dry_run=True)
    assert reply.code == 0 and reply.data["dry_run"] is True
    assert [(op["op"], op["name"]) for op in reply.data["plan"]] == [
        ("link_add", bridge_name(network_id)),
        ("link_set", "ens224"),
        ("link_set", bridge_name(network_id)),
    ]
    assert reply.data["plan"][1]["master"] == bridge_name(network_id)
    assert kernel.links() == before
    assert call("NetworkHandler", "show", {"network_id": network_id}).code == 30003


def test_list_and_show_report_drift_made_behind_the_workers_back(call, kernel):
    gone, released, healthy = new_id(), new_id(), new_id()
    for network_id, nic in zip((gone, released, healthy), NICS, strict=True):
        assert call("NetworkHandler", "create", flat(network_id, nic)).code == 0
    kernel.ip("link", "del", bridge_name(gone))
    kernel.ip("link", "set", "ens225", "nomaster")
    states = {n["network_id"]: n for n in call("NetworkHandler", "list").data["networks"]}
    assert states[healthy]["state"] == "ok" and states[healthy]["drift"] == []
    assert states[gone]["state"] == "drift"
    assert f"bridge {bridge_name(gone)} is missing" in states[gone]["drift"]
    assert states[released]["drift"] == [f"physical interface ens225 is not enslaved to {bridge_name(released)}"]
    shown = call("NetworkHandler", "show", {"network_id": released}).data
    assert shown["state"] == "drift" and shown["drift"] == states[released]["drift"]


def test_validation_codes_of_the_documented_fields(call):
    base = {"network_id": new_id(), "network_type": "vlan", "physical_interface": "ens224", "vlan_id": "7"}
    cases = [
        ({"network_type": "vxlan"}, 30001),
        ({"network_type": None}, 30001),
        ({"physical_interface": "a-name-of-16-byt"}, 30005),
        ({"physical_interface": "../x"}, 30006),
        ({"vlan_id": "0"}, 30006),
        ({"vlan_id": 4095}, 30006),
        ({"vlan_id": "12a"}, 30006),
        ({"vlan_id": None}, 30006),
        ({"vlan_id": True}, 30006),
        ({"network_id": "not-a-uuid"}, 30006),
        ({"mtu": 67}, 30006),
    ]
    for change, code in cases:
        reply = call("NetworkHandler", "create", base | change)
        assert reply.code == code, (change, reply)
        assert reply.data["field"] == next(iter(change)), (change, reply)
    flat_with_vlan = call("NetworkHandler", "create", flat(new_id(), vlan_id=5))
    assert flat_with_vlan.code == 30006 and flat_with_vlan.data["field"] == "vlan_id"
