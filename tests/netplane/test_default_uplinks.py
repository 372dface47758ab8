"""Which interfaces networks take when none are configured: NICs and bonds, never the management interface.

In the test's namespace veth ends play the NICs, so the plane is told to count veths as uplinks; everything
else is the code path of a real host's default.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.netplane.ownership import UPLINK_KINDS, PhysicalInterfaces
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.netplane.reader import Link
from kvmworker.netplane.store import FILENAME, NetworkStore
from tests.netplane.conftest import Call, Kernel, caller, flat, handlers

pytestmark = pytest.mark.netlink

VETH_AS_NIC = UPLINK_KINDS | {"veth"}


@pytest.fixture
def default_call(namespace: str, state_dir: Path) -> Iterator[Call]:
    """Handlers with no physical_interfaces configured: the default a fresh install runs with."""
    plane = Netplane(NetlinkPool(namespace), NetworkStore(state_dir / FILENAME), PhysicalInterfaces(None, VETH_AS_NIC))
    yield caller(*handlers(plane))
    plane.close()


def test_a_nic_carrying_the_hosts_address_is_refused_as_an_uplink_by_default(default_call, kernel: Kernel):
    kernel.ip("addr", "add", "198.51.100.7/24", "dev", "ens224")
    kernel.ip("link", "set", "ens224", "up")
    reply = default_call("NetworkHandler", "create", flat(str(uuid.uuid4())))
    assert reply.code == 30004 and reply.data["field"] == "physical_interface"
    assert "198.51.100.7/24" in reply.data["detail"] and "physical_interfaces" in reply.data["detail"]
    assert "master" not in kernel.link("ens224")


def test_a_nic_with_only_a_route_through_it_is_refused_too(default_call, kernel: Kernel):
    kernel.ip("link", "set", "ens225", "up")
    kernel.ip("route", "add", "203.0.113.0/24", "dev", "ens225")
    reply = default_call("NetworkHandler", "create", flat(str(uuid.uuid4()), nic="ens225"))
    assert reply.code == 30004 and "203.0.113.0/24" in reply.data["detail"]


def test_a_nic_that_carries_nothing_but_link_local_ipv6_is_taken(default_call, kernel: Kernel):
    kernel.ip("link", "set", "ens226", "up")  # gets fe80::/64 and its route, like every NIC that is up
    network_id = str(uuid.uuid4())
    reply = default_call("NetworkHandler", "create", flat(network_id, nic="ens226"))
    assert reply.code == 0, reply.data
    assert kernel.link("ens226")["master"] == reply.data["name"]


def test_enslaving_the_management_nic_through_device_set_is_refused(default_call, kernel: Kernel):
    kernel.ip("addr", "add", "198.51.100.8/24", "dev", "ens224")
    assert default_call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge"}).code == 0
    reply = default_call("DeviceHandler", "set", {"name": "ens224", "master": "kvtbr0"})
    assert reply.code == 30004 and "198.51.100.8/24" in reply.data["detail"]
    assert "master" not in kernel.link("ens224")


def test_a_configured_interface_is_trusted_even_when_it_carries_an_address(namespace: str, state_dir: Path, kernel):
    kernel.ip("addr", "add", "198.51.100.9/24", "dev", "ens224")
    plane = Netplane(NetlinkPool(namespace), NetworkStore(state_dir / FILENAME), PhysicalInterfaces(["ens224"]))
    try:
        assert caller(*handlers(plane))("NetworkHandler", "create", flat(str(uuid.uuid4()))).code == 0
    finally:
        plane.close()


@pytest.mark.parametrize("kind", ["bond", "team", None])
def test_bonds_teams_and_nics_are_uplinks_by_default(kind):
    # This kernel has no bonding module, so the bond is described rather than made.
    link = Link(index=7, name="bond0", kind=kind)
    assert PhysicalInterfaces().check("bond0", link) is link and PhysicalInterfaces().permits(link)


@pytest.mark.parametrize("kind", ["veth", "bridge", "vlan", "vxlan", "tun", "dummy"])
def test_made_devices_are_not_uplinks_by_default(kind):
    link = Link(index=7, name="x0", kind=kind)
    assert not PhysicalInterfaces().permits(link)
