"""Devices as DeviceHandler and NamespaceHandler show them, and the checks before one is changed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kvmworker.handlers.naming import is_owned
from kvmworker.netplane.ownership import PhysicalInterfaces, is_worker_device, network_of, user_alias
from kvmworker.netplane.reader import Link
from kvmworker.protocol.errors import DeviceNotFound, OperationNotAllowed

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
