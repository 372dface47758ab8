import pytest
from pyroute2 import IPRoute, netns

from kvmworker.inventory.network import NetworkInventory
from kvmworker.netplane.naming import device_alias
from kvmworker.protocol.codes import Code
from tests.host.conftest import host_handler, unique, while_interfaces_unchanged

pytestmark = pytest.mark.netlink


def _by_name(data):
    return {i["name"]: i for i in data["interfaces"]}


def test_the_loopback_and_a_veth_of_the_test_are_listed_with_kind_and_mac(call, veth_namespace):
    reply = call(host_handler(network=NetworkInventory(netns=veth_namespace.namespace)), "network")
    assert reply.code == Code.OK
    found = _by_name(reply.data)
    assert found["lo"]["kind"] == "loopback"
    assert found[veth_namespace.name]["kind"] == "veth"
    assert found[veth_namespace.name]["mac"] == veth_namespace.mac
    assert found[veth_namespace.peer]["mac"] == veth_namespace.peer_mac
    assert found[veth_namespace.name]["admin_up"] is True
    assert found[veth_namespace.peer]["admin_up"] is False


def test_addresses_masters_and_the_ownership_mark_are_reported(veth_namespace):
    bridge = unique("kvtbr")
    with IPRoute(netns=veth_namespace.namespace, flags=0) as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
        (br,) = ipr.link_lookup(ifname=bridge)
        (veth,) = ipr.link_lookup(ifname=veth_namespace.name)
        ipr.link("set", index=br, ifalias=device_alias())
        ipr.link("set", index=veth, master=br)
        ipr.addr("add", index=br, address="192.0.2.1", prefixlen=24)
    found = _by_name(NetworkInventory(netns=veth_namespace.namespace).read())
    assert found[bridge]["kind"] == "bridge"
    assert found[bridge]["managed"] is True and found[veth_namespace.name]["managed"] is False
    assert found[veth_namespace.name]["master"] == bridge
    assert {"family": "inet", "address": "192.0.2.1", "prefixlen": 24, "cidr": "192.0.2.1/24"} in found[bridge][
        "addresses"
    ]


def test_a_vxlan_is_told_apart_from_a_physical_interface(veth_namespace):
    vxlan = unique("kvtvx")
    with IPRoute(netns=veth_namespace.namespace, flags=0) as ipr:
        ipr.link("add", ifname=vxlan, kind="vxlan", vxlan_id=4242, vxlan_port=4789)
    found = _by_name(NetworkInventory(netns=veth_namespace.namespace).read())
    assert found[vxlan]["kind"] == "vxlan"
    assert found[vxlan]["speed_mbps"] is None  # not the worker's own namespace: sysfs would show another's links


def test_the_worker_namespace_is_read_when_none_is_given():
    expected, found = while_interfaces_unchanged(NetworkInventory().read)
    assert {i["name"] for i in found["interfaces"]} == expected


def test_a_namespace_that_does_not_exist_is_a_network_info_failure_and_is_not_created(call):
    missing = unique("kvtns")
    reply = call(host_handler(network=NetworkInventory(netns=missing)), "network")
    assert reply.code == Code.NETWORK_INFO_FAILED == 40301
    assert missing in reply.data["detail"]
    assert missing not in netns.listnetns()


@pytest.fixture
def own_namespace_tap():
    """A tap device in the worker's own namespace (tuntap is created through /dev/net/tun there)."""
    name = unique("kvt")
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    try:
        yield name
    finally:
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)


def test_a_tap_device_is_reported_as_tap(own_namespace_tap):
    found = _by_name(NetworkInventory().read())
    assert found[own_namespace_tap]["kind"] == "tap"
    assert found[own_namespace_tap]["managed"] is False


def test_the_summary_counts_links_and_names_the_managed_ones(call, veth_namespace):
    bridge = unique("kvtbr")
    with IPRoute(netns=veth_namespace.namespace, flags=0) as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
        (br,) = ipr.link_lookup(ifname=bridge)
        ipr.link("set", index=br, ifalias=device_alias())
    inventory = NetworkInventory(netns=veth_namespace.namespace)
    try:
        reply = call(host_handler(network=inventory), "summary")
    finally:
        inventory.close()  # its sockets would keep the namespace alive
    assert reply.data["network"] == {"interfaces": 4, "physical": [], "managed": [bridge]}


def test_a_missing_namespace_is_the_network_sections_code_inside_the_summary(call):
    missing = unique("kvtns")
    reply = call(host_handler(network=NetworkInventory(netns=missing)), "summary")
    assert reply.code == Code.OK
    assert reply.data["network"]["error"]["code"] == Code.NETWORK_INFO_FAILED
    assert missing in reply.data["network"]["error"]["detail"]
    assert missing not in netns.listnetns()
