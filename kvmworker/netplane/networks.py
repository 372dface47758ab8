"""Networks: their names, their rules, the steps that make (or repair, or remove) one, and drift.

A network is a bridge ``brq<id[:11]>`` with one port: the physical interface itself (flat) or a
VLAN subinterface on it (vlan). Creating, repeating a create and restoring at start-up are one
operation: compare what the kernel has with what the network needs, and plan the difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from kvmworker.api.network import FLAT, VLAN
from kvmworker.netplane import health
from kvmworker.netplane.naming import bridge_name, network_alias
from kvmworker.netplane.netlink import Netlink
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.plan import AddLink, DeleteLink, SetLink, Step
from kvmworker.netplane.reader import Link
from kvmworker.netplane.store import Network, NetworkStore
from kvmworker.protocol.errors import InvalidParameter, OperationNotAllowed
from kvmworker.protocol.types import IFNAMSIZ

Lookup = Callable[[str], Link | None]


def subinterface_name(physical_interface: str, vlan_id: int) -> str:
    """``<phys>.<vid>``; when that exceeds 15 bytes, the interface name is cut and a hash of it keeps it unique."""
    name = f"{physical_interface}.{vlan_id}"
    if len(name) <= IFNAMSIZ - 1:
        return name
    digest = hashlib.sha256(physical_interface.encode()).hexdigest()[:4]
    keep = IFNAMSIZ - 1 - len(digest) - len(f".{vlan_id}")
    return f"{physical_interface[:keep]}{digest}.{vlan_id}"


def new_network(
    network_id: str, network_type: str, physical_interface: str, vlan_id: int | None, mtu: int | None
) -> Network:
    subinterface = subinterface_name(physical_interface, vlan_id) if network_type == VLAN and vlan_id else None
    return Network(network_id, network_type, physical_interface, vlan_id, mtu, bridge_name(network_id), subinterface)


def check_conflicts(store: NetworkStore, network: Network) -> None:
    """The rules between networks (all 30006): one flat network per interface, flat and vlan never share
    an interface, a VLAN id once per interface, and bridge names (11 characters of the id) unique."""
    same_bridge = store.with_bridge(network.bridge)
    if same_bridge is not None and same_bridge.network_id != network.network_id:
        raise InvalidParameter(
            f"bridge name {network.bridge} is already network {same_bridge.network_id}'s: "
            "the first 11 characters of the two network ids are equal",
            field="network_id",
        )
    others = [n for n in store.on_interface(network.physical_interface) if n.network_id != network.network_id]
    phys = network.physical_interface
    flat = next((n for n in others if n.network_type == FLAT), None)
    if flat is not None:
        raise InvalidParameter(
            f"{phys} already carries flat network {flat.network_id}; a flat network owns its interface alone",
            field="physical_interface",
        )
    if network.network_type == FLAT and others:
        ids = ", ".join(n.network_id for n in others[:3]) + (", ..." if len(others) > 3 else "")
        raise InvalidParameter(
            f"{phys} carries vlan networks ({ids}); flat and vlan networks cannot share a physical interface",
            field="physical_interface",
        )
    same_vlan = next((n for n in others if n.vlan_id == network.vlan_id), None)
    if same_vlan is not None:
        raise InvalidParameter(
            f"VLAN {network.vlan_id} on {phys} is already network {same_vlan.network_id}", field="vlan_id"
        )


def check_same_parameters(known: Network, asked: Network) -> None:
    if known.parameters == asked.parameters:
        return
    names = ("network_type", "physical_interface", "vlan_id", "mtu")
    diff = [
        f"{n} {a!r} (it has {k!r})" for n, k, a in zip(names, known.parameters, asked.parameters, strict=True) if k != a
    ]
    raise InvalidParameter(f"network {known.network_id} exists with other parameters: " + "; ".join(diff))


def plan_network(network: Network, nl: Netlink, physical: PhysicalInterfaces) -> list[Step]:
    """The steps from what the kernel has now to what ``network`` needs: everything for a new network,
    nothing for a healthy one, the missing pieces after a reboot or a deletion behind our back."""
    phys = physical.check_uplink(network.physical_interface, nl)
    if network.mtu is not None and network.mtu > phys.mtu:
        raise InvalidParameter(f"mtu {network.mtu} is larger than {phys.name}'s MTU {phys.mtu}", field="mtu")
    tag = network_alias(network.network_id)
    bridge = _ours_or_absent(nl.link(network.bridge), tag, network)
    steps: list[Step] = []
    if bridge is None:
        steps.append(AddLink(network.bridge, "bridge", tag))
    elif not bridge.up:
        steps.append(SetLink(network.bridge, state="up"))
    bridge_index = bridge.index if bridge else None
    if network.network_type == VLAN:
        steps += _vlan_port(network, nl, phys, bridge_index, tag)
    else:
        steps += _flat_port(network, nl, phys, bridge_index)
    if network.mtu is not None and (bridge is None or bridge.mtu != network.mtu):
        steps.append(SetLink(network.bridge, mtu=network.mtu))  # after the port: a new port resets a bridge's MTU
    return steps


def _vlan_port(network: Network, nl: Netlink, phys: Link, bridge_index: int | None, tag: str) -> list[Step]:
    steps: list[Step] = [] if phys.up else [SetLink(phys.name, state="up")]
    assert network.subinterface is not None
    sub = _ours_or_absent(nl.link(network.subinterface), tag, network)
    if sub is None:
        steps.append(_subinterface(network, tag))
    elif sub.master != bridge_index or not sub.up:
        steps.append(SetLink(sub.name, master=network.bridge, state="up"))
    return steps


def _flat_port(network: Network, nl: Netlink, phys: Link, bridge_index: int | None) -> list[Step]:
    if phys.master and phys.master != bridge_index:
        master = nl.link_at(phys.master)
        raise OperationNotAllowed(
            f"{phys.name} is already enslaved to {master.name if master else phys.master}; release it first",
            field="physical_interface",
        )
    if phys.master == bridge_index and phys.up:
        return []
    return [SetLink(phys.name, master=network.bridge, state="up")]


def _subinterface(network: Network, tag: str) -> AddLink:
    assert network.subinterface is not None
    return AddLink(
        network.subinterface,
        "vlan",
        tag,
        mtu=network.mtu,
        master=network.bridge,
        link=network.physical_interface,
        vlan_id=network.vlan_id,
    )


def _ours_or_absent(link: Link | None, tag: str, network: Network) -> Link | None:
    if link is not None and link.alias != tag:
        raise OperationNotAllowed(
            f"a device named {link.name} exists and is not network {network.network_id}'s "
            f"(its ifalias is {link.alias!r}); it is left alone",
            field="network_id",
        )
    return link


def plan_removal(network: Network, nl: Netlink) -> tuple[list[Step], list[str]]:
    """Steps that remove what the network made and release its interface; and devices left alone
    because they carry the network's name but not its tag."""
    tag = network_alias(network.network_id)
    steps: list[Step] = []
    foreign: list[str] = []
    bridge = nl.link(network.bridge)
    if network.subinterface is not None:
        sub = nl.link(network.subinterface)
        if sub is not None and sub.alias == tag:
            steps.append(DeleteLink(sub.name, recreate=_subinterface(network, tag)))
        elif sub is not None:
            foreign.append(sub.name)
    elif bridge is not None:
        phys = nl.link(network.physical_interface)
        if phys is not None and phys.master == bridge.index:
            steps.append(SetLink(phys.name, master=None))
    if bridge is not None and bridge.alias == tag:
        steps.append(DeleteLink(bridge.name, recreate=AddLink(bridge.name, "bridge", tag, mtu=network.mtu)))
    elif bridge is not None:
        foreign.append(bridge.name)
    return steps, foreign


def bridge_view(nl: Netlink) -> Lookup:
    """Links by name from one dump of bridges and their ports (no aliases in it); a port that is not
    enslaved is absent from that view and is asked for alone, which only drift makes happen."""
    view = {link.name: link for link in nl.bridges_and_ports()}
    return lambda name: view.get(name) or nl.link(name)


def drift(network: Network, lookup: Lookup, check_alias: bool = True) -> list[str]:
    """What is wrong in the kernel for this network, in words; empty when it is healthy."""
    return [problem.text for problem in health.problems(network, lookup, check_alias=check_alias)]


def network_data(network: Network) -> dict[str, Any]:
    """The reply data for a network: the legacy ``name`` (its bridge) first."""
    return {
        "name": network.bridge,
        "network_id": network.network_id,
        "network_type": network.network_type,
        "physical_interface": network.physical_interface,
        "vlan_id": network.vlan_id,
        "mtu": network.mtu,
        "subinterface": network.subinterface,
    }
