"""Who may be touched: devices tagged by this worker, and the physical interfaces networks may use.

Tags live in the ifalias (``kvmworker.netplane.naming``): ``kvmworker:network:<id>`` on a network's
bridge and subinterface, ``kvmworker:device`` (optionally ``:<caller's alias>``) on devices made
through DeviceHandler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmworker.netplane.naming import device_alias, is_owned, network_alias
from kvmworker.netplane.reader import Link
from kvmworker.protocol.errors import DeviceNotFound, OperationNotAllowed

if TYPE_CHECKING:
    from kvmworker.netplane.netlink import Netlink

_NETWORK_TAG = network_alias("")


def network_of(link: Link) -> str | None:
    """The network a device belongs to, if it is one of a network's devices."""
    alias = link.alias or ""
    return alias[len(_NETWORK_TAG) :] if alias.startswith(_NETWORK_TAG) else None


def device_tag(user_alias: str | None = None) -> str:
    return device_alias() if not user_alias else f"{device_alias()}:{user_alias}"


def user_alias(link: Link) -> str | None:
    """The alias a caller gave a worker-made device, without the ownership tag; other devices' alias as is."""
    alias = link.alias
    if alias and alias.startswith(device_alias() + ":"):
        return alias[len(device_alias()) + 1 :]
    return None if alias == device_alias() else alias


def is_worker_device(link: Link) -> bool:
    alias = link.alias or ""
    return alias == device_alias() or alias.startswith(device_alias() + ":")


UPLINK_KINDS = frozenset({None, "bond", "team"})
"""Physical NICs have no rtnl link kind; the host's own aggregates of them (bonds, teams) carry networks too."""


def is_virtual(link: Link, uplink_kinds: frozenset[str | None] = UPLINK_KINDS) -> bool:
    """Anything made through netlink that is not an aggregate of NICs: veth, tap, bridge, vlan, vxlan, ..."""
    return link.kind not in uplink_kinds or link.loopback


class PhysicalInterfaces:
    """Which interfaces networks (and enslaving through DeviceHandler) may use.

    ``allowed`` from configuration; when None, any existing NIC, bond or team that does not carry the
    host's own traffic (an address or a route: the management interface is never taken by default).
    """

    def __init__(self, allowed: list[str] | None = None, uplink_kinds: frozenset[str | None] = UPLINK_KINDS):
        self.allowed = None if allowed is None else frozenset(allowed)
        self.uplink_kinds = uplink_kinds

    def permits(self, link: Link) -> bool:
        if is_owned(link.alias):
            return False
        if self.allowed is not None:
            return link.name in self.allowed
        return not is_virtual(link, self.uplink_kinds)

    def check(self, name: str, link: Link | None, field: str = "physical_interface") -> Link:
        """The interface, or the reason it cannot be used (30003 missing, 30004 not allowed)."""
        if self.allowed is not None and name not in self.allowed:
            allowed = ", ".join(sorted(self.allowed)) or "none"
            raise OperationNotAllowed(
                f"{name} is not a configured physical interface (allowed: {allowed})", field=field
            )
        if link is None:
            raise DeviceNotFound(f"physical interface {name} does not exist", field=field)
        if is_owned(link.alias):
            raise OperationNotAllowed(f"{name} was created by this worker; it is not a physical interface", field=field)
        if self.allowed is None and is_virtual(link, self.uplink_kinds):
            what = "the loopback" if link.loopback else f"a virtual ({link.kind}) interface"
            raise OperationNotAllowed(
                f"{name} is {what}; only physical interfaces are used unless configured in physical_interfaces",
                field=field,
            )
        return link

    def check_uplink(self, name: str, nl: Netlink, field: str = "physical_interface") -> Link:
        """``check``, and by default refuse an interface the host itself talks through: enslaving it to a
        bridge or stacking a network on it would cut the host off. A configured list is trusted as is."""
        link = self.check(name, nl.link(name), field)
        if self.allowed is None:
            carried = nl.host_traffic(link.index)
            if carried:
                raise OperationNotAllowed(
                    f"{name} carries the host's own traffic ({', '.join(carried[:3])}): it looks like the "
                    "management interface; list it in physical_interfaces to use it anyway",
                    field=field,
                )
        return link
