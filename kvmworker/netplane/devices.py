"""Devices as DeviceHandler and NamespaceHandler show them, and the checks before one is changed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kvmworker.netplane.naming import is_owned
from kvmworker.netplane.ownership import PhysicalInterfaces, is_worker_device, network_of, user_alias
from kvmworker.netplane.reader import Link
from kvmworker.protocol.errors import DeviceNotFound, InvalidParameter, OperationNotAllowed

if TYPE_CHECKING:
    from kvmworker.netplane.netlink import Netlink

KIND_NAMES = {"tun": "tap", None: "physical"}


def device_data(link: Link, name_of: Callable[[int], str | None], addresses: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": link.name,
        "index": link.index,
        "type": "loopback" if link.loopback else KIND_NAMES.get(link.kind, link.kind),
        "state": "up" if link.up else "down",
        "operstate": link.operstate,
        "mtu": link.mtu,
        "mac": link.mac,
        "master": name_of(link.master) if link.master else None,
        "alias": user_alias(link),
        "owner": _owner(link),
    }
    if link.kind in ("vlan", "vxlan"):
        data["vlan_id" if link.kind == "vlan" else "vni"] = link.tag
        data["link"] = name_of(link.parent) if link.parent else None
    if addresses is not None:
        data["addresses"] = addresses
    return data


def names_by_index(links: list[Link]) -> Callable[[int], str | None]:
    names: Mapping[int, str] = {link.index: link.name for link in links}
    return names.get


def _owner(link: Link) -> str | None:
    network = network_of(link)
    if network is not None:
        return f"network:{network}"
    return "worker" if is_worker_device(link) else None


def existing(link: Link | None, name: str) -> Link:
    if link is None:
        raise DeviceNotFound(f"no device named {name}", field="name")
    return link


def check_worker_device(link: Link) -> None:
    """Devices made through DeviceHandler may be changed or deleted; a network's devices only through
    NetworkHandler, and anything else not at all."""
    network = network_of(link)
    if network is not None:
        raise OperationNotAllowed(f"{link.name} belongs to network {network}; use NetworkHandler", field="name")
    if not is_worker_device(link):
        raise OperationNotAllowed(f"{link.name} was not created by this worker; it is left alone", field="name")


def check_addressable(link: Link) -> None:
    if not is_owned(link.alias):
        raise OperationNotAllowed(
            f"{link.name} was not created by this worker; its addresses are left alone", field="name"
        )


def check_usable_parent(link: Link, physical: PhysicalInterfaces, field: str = "link") -> None:
    if not (is_worker_device(link) or physical.permits(link)):
        raise OperationNotAllowed(
            f"{link.name} is neither a device of this worker nor an allowed physical interface", field=field
        )


def check_master_change(link: Link, master: str | None, nl: Netlink) -> None:
    """A device is enslaved only onto, and released only from, a bridge this worker owns (a network's or its
    own): a host NIC is never pulled off a bridge the host set up, nor a worker veth plugged into one."""
    if link.master:
        current = nl.link_at(link.master)
        if current is not None and not is_owned(current.alias):
            raise OperationNotAllowed(
                f"{link.name} is a port of {current.name}, which this worker did not create", field="master"
            )
    if master is None:
        return
    bridge = existing(nl.link(master), master)
    if bridge.kind != "bridge":
        raise InvalidParameter(f"{master} is not a bridge", field="master")
    if not is_owned(bridge.alias):
        raise OperationNotAllowed(f"bridge {master} was not created by this worker", field="master")
