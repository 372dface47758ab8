"""The ``network`` section: every interface of the worker's namespace through netlink, managed ones marked.

A managed interface is one whose ifalias carries the worker's ownership tag (``naming.is_owned``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmworker.inventory.files import read_int, read_text
from kvmworker.inventory.section import failing_as
from kvmworker.netplane.naming import is_owned
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.protocol.errors import NetworkInfoFailed

if TYPE_CHECKING:  # loaded by the first ``read()``: pyroute2.iproute brings asyncio and unittest (~3 MB)
    from pyroute2.iproute import IPRoute

ARPHRD_LOOPBACK = 772
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
TUN_TYPES = {1: "tun", 2: "tap"}
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


class NetworkInventory:
    """``read()`` decodes every attribute through pyroute2 (~0.35 ms a link); ``summary()`` counts through the
    netplane's lean reader on sockets kept open (~15 µs a link), so a host with thousands of links still
    answers ``summary`` in milliseconds."""

    def __init__(self, netns: str | None = None, sys: Path = Path("/sys"), links: NetlinkPool | None = None):
        self._netns = netns
        # sysfs shows the namespace it was mounted in: link speed is read only for the worker's own
        self._class_net = Path(sys) / "class/net" if netns is None else None
        self._links = links or NetlinkPool(netns)

    def read(self) -> dict[str, Any]:
        with failing_as(NetworkInfoFailed, self._where()), self._open() as ipr:
            links, addrs = ipr.get_links(), ipr.get_addr()
            names = {link["index"]: link.get("ifname") for link in links}
            by_index = _addresses_by_index(addrs)
            interfaces = [self._interface(link, names, by_index.get(link["index"], [])) for link in links]
            return {"namespace": self._netns, "interfaces": sorted(interfaces, key=lambda i: i["index"])}

    def summary(self) -> dict[str, Any]:
        with failing_as(NetworkInfoFailed, self._where()):
            links = self._links.get().links()
        return {
            "interfaces": len(links),
            "physical": sorted(link.name for link in links if link.kind is None and not link.flags & IFF_LOOPBACK),
            "managed": sorted(link.name for link in links if is_owned(link.alias)),
        }

    def close(self) -> None:
        self._links.close()

    def _where(self) -> str:
        return f"network namespace {self._netns!r}" if self._netns else "network interfaces"

    def _open(self) -> IPRoute:
        from pyroute2.iproute import IPRoute

        if self._netns is None:
            return IPRoute()
        # flags=0: pyroute2 would otherwise create a namespace that is not there
        return IPRoute(netns=self._netns, flags=0)

    def _interface(self, link: Any, names: dict[int, str], addresses: list[dict[str, Any]]) -> dict[str, Any]:
        name, alias = link.get("ifname"), link.get("ifalias")
        stats = link.get("stats64") or link.get("stats") or {}
        master = link.get("master")
        return {
            "index": link["index"],
            "name": name,
            "kind": _kind(link),
            "mac": link.get("address"),
            "mtu": link.get("mtu"),
            "admin_up": bool(link["flags"] & IFF_UP),
            "oper_state": (link.get("operstate") or "UNKNOWN").lower(),
            "speed_mbps": self._speed(name),
            "master": names.get(master) if master else None,
            "alias": alias,
            "managed": is_owned(alias),
            "addresses": addresses,
            "counters": {key: stats.get(key) for key in COUNTERS},
        }

    def _speed(self, name: str) -> int | None:
        """None for virtual links and for down ones (the kernel reports -1 or refuses)."""
        if self._class_net is None or read_text(self._class_net / name / "device" / "uevent") is None:
            return None
        speed = read_int(self._class_net / name / "speed")
        return speed if speed is not None and speed > 0 else None


def _kind(link: Any) -> str:
    kind = link.get(("linkinfo", "kind"))
    if kind == "tun":
        data = link.get(("linkinfo", "data"))
        return TUN_TYPES.get(data.get("tun_type") if data else None, "tun")
    if kind:
        return kind
    return "loopback" if link["ifi_type"] == ARPHRD_LOOPBACK else "physical"


def _addresses_by_index(addrs: Any) -> dict[int, list[dict[str, Any]]]:
    result: dict[int, list[dict[str, Any]]] = {}
    for addr in addrs:
        result.setdefault(addr["index"], []).append(
            {
                "family": FAMILIES.get(addr["family"], str(addr["family"])),
                "address": addr.get("address"),
                "prefixlen": addr["prefixlen"],
                "cidr": f"{addr.get('address')}/{addr['prefixlen']}",
            }
        )
    return result
