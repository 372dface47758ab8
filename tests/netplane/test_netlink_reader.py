"""The lean link reader answers what pyroute2's full decoding answers, for every kind of device made here."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pyroute2 import IPRoute

from kvmworker.netplane.netlink import open_netlink
from kvmworker.netplane.reader import IFF_UP, Link

pytestmark = pytest.mark.netlink


@pytest.fixture
def assorted(kernel):
    kernel.ip("link", "add", "kvtbr0", "type", "bridge")
    kernel.ip("link", "set", "kvtbr0", "up", "mtu", "1400")
    kernel.ip("link", "set", "ens224", "master", "kvtbr0", "up")
    kernel.ip("link", "set", "ens224", "alias", "an alias with spaces")
    kernel.ip("link", "add", "kvtvx0", "type", "vxlan", "id", "77", "dev", "ens225", "dstport", "4789")
    kernel.ip("tuntap", "add", "kvttap0", "mode", "tap")
    return kernel


def decoded_by_pyroute2(namespace: str) -> dict[str, Link]:
    with IPRoute(netns=namespace, flags=0) as ipr:
        return {msg.get("ifname"): _link(msg) for msg in ipr.link("dump")}


def _link(msg) -> Link:
    kind = msg.get(("linkinfo", "kind"))
    tag = msg.get(("linkinfo", "data", "vxlan_id")) if kind == "vxlan" else None
    parent = msg.get(("linkinfo", "data", "vxlan_link")) if kind == "vxlan" else msg.get("link")
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        kind=kind,
        flags=msg["flags"],
        master=msg.get("master") or 0,
        alias=msg.get("ifalias"),
        mtu=msg.get("mtu"),
        mac=msg.get("address"),
        parent=parent or 0,
        tag=tag,
        operstate=msg.get("operstate", "unknown").lower(),
    )


def settled(link: Link | None) -> Link | None:
    """Carrier and operstate of a fresh device change on their own for a while: compare the rest."""
    return link and replace(link, flags=link.flags & IFF_UP, operstate="")


def test_a_dump_and_single_gets_match_pyroute2s_decoding(namespace, assorted):
    nl = open_netlink(namespace)
    expected = {name: settled(link) for name, link in decoded_by_pyroute2(namespace).items()}
    assert {link.name: settled(link) for link in nl.links()} == expected
    for name, link in expected.items():
        assert settled(nl.link(name)) == link and settled(nl.link_at(link.index)) == link
    assert nl.link("nosuch0") is None and nl.link_at(99999) is None
    nl.close()


def test_the_kernel_filters_by_kind_and_the_bridge_view_holds_bridges_and_ports_only(namespace, assorted):
    nl = open_netlink(namespace)
    assert [link.name for link in nl.links(kind="bridge")] == ["kvtbr0"]
    assert sorted(link.name for link in nl.bridges_and_ports()) == ["ens224", "kvtbr0"]
    port = next(link for link in nl.bridges_and_ports() if link.name == "ens224")
    assert port.master == nl.link("kvtbr0").index
    nl.close()


def test_addresses_of_one_device_or_all_match_pyroute2s_decoding(namespace, kernel):
    kernel.ip("link", "set", "ens224", "up")
    kernel.ip("addr", "add", "10.7.0.1/24", "dev", "ens224")
    kernel.ip("addr", "add", "10.7.1.1", "peer", "10.7.1.2/32", "dev", "ens224")
    kernel.ip("addr", "add", "fd07::1/64", "dev", "ens224", "nodad")
    kernel.ip("addr", "add", "10.8.0.1/16", "dev", "ens225")
    nl = open_netlink(namespace)
    with IPRoute(netns=namespace, flags=0) as ipr:
        expected = sorted(
            (msg["index"], f"{msg.get('IFA_LOCAL') or msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            for msg in ipr.addr("dump")
        )
    assert sorted((a.index, a.cidr) for a in nl.addresses()) == expected
    ens224 = nl.link("ens224").index
    mine = {a.cidr for a in nl.addresses(ens224)}
    assert {"10.7.0.1/24", "10.7.1.1/32", "fd07::1/64"} <= mine and "10.8.0.1/16" not in mine
    nl.close()
