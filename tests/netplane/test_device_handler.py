"""DeviceHandler on the real kernel: what the worker makes it may change; everything else it leaves alone."""

from __future__ import annotations

import uuid

import pytest

from kvmworker.netplane.naming import bridge_name, device_alias
from tests.conftest import unique
from tests.netplane.conftest import flat, ip, make_namespace

pytestmark = pytest.mark.netlink


def test_veth_tap_bridge_and_vxlan_are_made_tagged_and_shown(call, kernel):
    assert call("DeviceHandler", "create", {"name": "kvtv0", "type": "veth", "peer": "kvtv1", "mtu": 1400}).code == 0
    assert call("DeviceHandler", "create", {"name": "kvttap0", "type": "TAP"}).code == 0
    assert call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge", "mac": "52:54:00:12:34:56"}).code == 0
    vxlan = call("DeviceHandler", "create", {"name": "kvtvx0", "type": "vxlan", "vni": 4242, "link": "ens224"})
    assert vxlan.code == 0 and vxlan.data["vni"] == 4242 and vxlan.data["link"] == "ens224"
    links = kernel.links()
    assert {links[n]["ifalias"] for n in ("kvtv0", "kvtv1", "kvttap0", "kvtbr0", "kvtvx0")} == {device_alias()}
    assert links["kvtv0"]["mtu"] == 1400 and links["kvtv0"]["link"] == "kvtv1"
    assert links["kvttap0"]["linkinfo"]["info_kind"] == "tun"
    assert links["kvtbr0"]["address"] == "52:54:00:12:34:56"
    shown = call("DeviceHandler", "show", {"name": "kvttap0"}).data
    assert (shown["type"], shown["owner"], shown["state"]) == ("tap", "worker", "up")
    listed = {d["name"]: d for d in call("DeviceHandler", "list").data["devices"]}
    assert listed["lo"]["type"] == "loopback" and listed["lo"]["owner"] is None
    assert listed["kvtv1"]["owner"] == "worker"


def test_set_changes_state_mtu_mac_master_and_alias_and_keeps_the_ownership_tag(call, kernel):
    call("DeviceHandler", "create", {"name": "kvtv0", "type": "veth", "peer": "kvtv1"})
    call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge"})
    change = {"name": "kvtv0", "state": "down", "mtu": 1300, "mac": "52:54:00:aa:bb:cc", "master": "kvtbr0"}
    reply = call("DeviceHandler", "set", change | {"alias": "vm web-1 nic 0"})
    assert reply.code == 0 and reply.data["alias"] == "vm web-1 nic 0" and reply.data["master"] == "kvtbr0"
    link = kernel.link("kvtv0")
    assert (link["mtu"], link["address"], link["master"]) == (1300, "52:54:00:aa:bb:cc", "kvtbr0")
    assert "UP" not in link["flags"] and link["ifalias"] == f"{device_alias()}:vm web-1 nic 0"
    assert call("DeviceHandler", "set", {"name": "kvtv0", "master": None}).code == 0
    assert "master" not in kernel.link("kvtv0")
    assert call("DeviceHandler", "set", {"name": "kvtv0"}).code == 30006


def test_addresses_are_added_shown_and_removed(call, kernel):
    call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge"})
    added = call("DeviceHandler", "addr_add", {"name": "kvtbr0", "address": "10.9.0.1/24"})
    assert added.code == 0 and "10.9.0.1/24" in added.data["addresses"]
    assert "10.9.0.1" in kernel.ip("-br", "addr", "show", "kvtbr0")
    assert call("DeviceHandler", "addr_add", {"name": "kvtbr0", "address": "10.9.0.1/24"}).code == 30006
    assert call("DeviceHandler", "addr_add", {"name": "kvtbr0", "address": "10.9.0.2"}).code == 30006
    removed = call("DeviceHandler", "addr_del", {"name": "kvtbr0", "address": "10.9.0.1/24"})
    assert removed.code == 0 and "10.9.0.1/24" not in removed.data["addresses"]


def test_devices_the_worker_does_not_own_are_30004_and_untouched(call, kernel):
    assert call("DeviceHandler", "delete", {"name": "ens224"}).code == 30004
    assert call("DeviceHandler", "delete", {"name": "lo"}).code == 30004
    assert call("DeviceHandler", "set", {"name": "ens224", "mtu": 1400}).code == 30004
    assert call("DeviceHandler", "set", {"name": "lo", "state": "up"}).code == 30004
    assert call("DeviceHandler", "addr_add", {"name": "ens224", "address": "10.0.0.1/24"}).code == 30004
    assert kernel.link("ens224")["mtu"] == 1500 and "lo" in kernel.links()
    assert call("DeviceHandler", "delete", {"name": "nosuch0"}).code == 30003


def test_an_allowed_physical_interface_may_be_enslaved_and_released_unless_a_network_uses_it(call, kernel):
    call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge"})
    assert call("DeviceHandler", "set", {"name": "ens225", "master": "kvtbr0"}).code == 0
    assert kernel.link("ens225")["master"] == "kvtbr0"
    assert call("DeviceHandler", "set", {"name": "ens225", "master": None}).code == 0
    assert "master" not in kernel.link("ens225")
    network_id = str(uuid.uuid4())
    call("NetworkHandler", "create", flat(network_id))
    taken = call("DeviceHandler", "set", {"name": "ens224", "master": "kvtbr0"})
    assert taken.code == 30004 and network_id in taken.data["detail"]
    bridge = call("DeviceHandler", "delete", {"name": bridge_name(network_id)})
    assert bridge.code == 30004 and "NetworkHandler" in bridge.data["detail"]
    assert call("DeviceHandler", "set", {"name": "ens226", "master": "ens225"}).code == 30006  # not a bridge


def test_a_worker_device_can_move_to_a_namespace_the_worker_made_and_be_handled_there(call, kernel):
    other = unique("kvt-np-")
    assert call("NamespaceHandler", "create", {"name": other}).code == 0
    try:
        call("DeviceHandler", "create", {"name": "kvtv0", "type": "veth", "peer": "kvtv1"})
        moved = call("DeviceHandler", "set", {"name": "kvtv1", "netns": other})
        assert moved.code == 0 and moved.data["owner"] == "worker"
        assert "kvtv1" not in kernel.links()
        assert "kvtv1" in ip("-n", other, "-br", "link")
        address = {"name": "kvtv1", "address": "fd00::1/64", "namespace": other}
        assert call("DeviceHandler", "addr_add", address).code == 0
        assert call("DeviceHandler", "delete", {"name": "kvtv1", "namespace": other}).code == 0
        assert "kvtv0" not in kernel.links()  # a veth goes with its peer
    finally:
        ip("netns", "del", other)


def test_creation_errors_have_their_codes_and_change_nothing(call, kernel):
    before = kernel.links()
    cases = [
        ({"name": "ens224", "type": "bridge"}, 30006),  # exists
        ({"name": "kvtv0", "type": "veth"}, 30006),  # no peer
        ({"name": "kvtv0", "type": "bridge", "vni": 5}, 30006),
        ({"name": "kvtv0", "type": "gre"}, 30006),
        ({"name": "kvtv0", "type": "vxlan", "vni": 16777216}, 30006),
        ({"name": "kvtv0", "type": "vxlan", "vni": 5, "link": "lo"}, 30004),
        ({"name": "kvtv0", "type": "vlan", "link": "nosuch", "vlan_id": 5}, 30003),
        ({"name": "kvtv0", "type": "bridge", "namespace": "kvt-no-such-ns"}, 30002),
        ({"name": "kvtv0", "type": "bridge", "colour": "red"}, 30006),
        ({"name": "kvtv0", "type": "bridge", "mac": "01:00:5e:00:00:01"}, 30006),
    ]
    for data, code in cases:
        reply = call("DeviceHandler", "create", data)
        assert reply.code == code, (data, reply)
    assert kernel.links() == before


def test_dry_run_returns_the_operation_and_changes_nothing(call, kernel):
    reply = call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge"}, dry_run=True)
    assert reply.data == {
        "dry_run": True,
        "plan": [{"op": "link_add", "name": "kvtbr0", "kind": "bridge", "alias": device_alias(), "state": "up"}],
    }
    assert "kvtbr0" not in kernel.links()


def test_a_worker_device_is_never_moved_into_a_namespace_the_worker_did_not_make(call, kernel):
    foreign = make_namespace(nics=())  # e.g. a container's namespace with a name in /run/netns
    try:
        call("DeviceHandler", "create", {"name": "kvtv0", "type": "veth", "peer": "kvtv1"})
        moved = call("DeviceHandler", "set", {"name": "kvtv1", "netns": foreign})
        assert moved.code == 30004 and moved.data["field"] == "netns" and foreign in moved.data["detail"]
        assert "kvtv1" in kernel.links() and "kvtv1" not in ip("-n", foreign, "-br", "link")
    finally:
        ip("netns", "del", foreign)


def test_master_changes_only_onto_and_off_bridges_the_worker_made(call, kernel):
    kernel.ip("link", "add", "kvthostbr", "type", "bridge")  # the host's own bridge, made behind the worker
    kernel.ip("link", "set", "ens225", "master", "kvthostbr")
    call("DeviceHandler", "create", {"name": "kvtv0", "type": "veth", "peer": "kvtv1"})
    released = call("DeviceHandler", "set", {"name": "ens225", "master": None})
    assert released.code == 30004 and "kvthostbr" in released.data["detail"]
    assert kernel.link("ens225")["master"] == "kvthostbr"
    plugged = call("DeviceHandler", "set", {"name": "kvtv0", "master": "kvthostbr"})
    assert plugged.code == 30004 and plugged.data["field"] == "master"
    assert "master" not in kernel.link("kvtv0")
    taken = call("DeviceHandler", "set", {"name": "ens226", "master": "kvthostbr"})
    assert taken.code == 30004 and "master" not in kernel.link("ens226")
