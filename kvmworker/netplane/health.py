"""A network's health: what is wrong with it in the kernel now, each problem with a reason word and a sentence.

``NetworkHandler.list``/``show`` report the sentences (``drift``); the network watch reports the reasons
(``network.state degraded``, ``reason``) and also looks at the uplink's carrier, which a cable or a switch
takes away and nobody can put back by a command (so it is not drift ``NetworkHandler.create`` would repair).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmworker.netplane.naming import network_alias
from kvmworker.netplane.reader import Link
from kvmworker.netplane.store import Network

Lookup = Callable[[str], Link | None]

HEALTHY, DEGRADED = "healthy", "degraded"


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str
    """One word: ``bridge_gone``, ``bridge_not_tagged``, ``bridge_down``, ``mtu_changed``, ``subinterface_gone``,
    ``subinterface_down``, ``uplink_gone``, ``uplink_down``, ``enslavement_lost``, ``uplink_carrier_lost``."""
    text: str


@dataclass(frozen=True, slots=True)
class Health:
    problems: tuple[Problem, ...] = ()

    @property
    def state(self) -> str:
        return DEGRADED if self.problems else HEALTHY

    @property
    def reason(self) -> str | None:
        """The first problem's reason: the bridge before its port, the port before the uplink's carrier."""
        return self.problems[0].reason if self.problems else None

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(p.reason for p in self.problems)

    def data(self) -> dict[str, Any]:
        return {"health": self.state, "reasons": list(self.reasons), "problems": [p.text for p in self.problems]}


def problems(network: Network, lookup: Lookup, *, check_alias: bool = True, carrier: bool = False) -> list[Problem]:
    """What is wrong in the kernel for ``network``, most fundamental first; empty when it is healthy.
    ``carrier`` also checks the uplink (its presence under a vlan network, and its carrier)."""
    bridge = lookup(network.bridge)
    found = _bridge_problems(network, bridge, check_alias)
    port_name = network.subinterface or network.physical_interface
    port = lookup(port_name)
    found += _port_problems(network, port, bridge)
    if carrier:
        uplink = port if network.subinterface is None else lookup(network.physical_interface)
        found += _uplink_problems(network, uplink, reported=found)
    return found


def health(network: Network, lookup: Lookup) -> Health:
    """Everything the watch reports: drift (the bridge's tag included) and the uplink's carrier."""
    return Health(tuple(problems(network, lookup, check_alias=True, carrier=True)))


def _bridge_problems(network: Network, bridge: Link | None, check_alias: bool) -> list[Problem]:
    name = network.bridge
    if bridge is None:
        return [Problem("bridge_gone", f"bridge {name} is missing")]
    found = []
    if check_alias and bridge.alias != network_alias(network.network_id):
        found.append(
            Problem("bridge_not_tagged", f"bridge {name} is not tagged as this network's (ifalias {bridge.alias!r})")
        )
    if not bridge.up:
        found.append(Problem("bridge_down", f"bridge {name} is down"))
    if network.mtu is not None and bridge.mtu != network.mtu:
        found.append(Problem("mtu_changed", f"bridge {name} has MTU {bridge.mtu}, not {network.mtu}"))
    return found


def _port_problems(network: Network, port: Link | None, bridge: Link | None) -> list[Problem]:
    sub = network.subinterface is not None
    what, word = ("subinterface", "subinterface") if sub else ("physical interface", "uplink")
    name = network.subinterface or network.physical_interface
    if port is None:
        return [Problem(f"{word}_gone", f"{what} {name} is missing")]
    if bridge is not None and port.master != bridge.index:
        return [Problem("enslavement_lost", f"{what} {name} is not enslaved to {network.bridge}")]
    if not port.up:
        return [Problem(f"{word}_down", f"{what} {name} is down")]
    return []


def _uplink_problems(network: Network, uplink: Link | None, reported: list[Problem]) -> list[Problem]:
    name = network.physical_interface
    said = {p.reason for p in reported}
    if uplink is None:
        return [] if "uplink_gone" in said else [Problem("uplink_gone", f"physical interface {name} is missing")]
    if not uplink.up:
        return [] if "uplink_down" in said else [Problem("uplink_down", f"physical interface {name} is down")]
    if not uplink.carrier:
        return [Problem("uplink_carrier_lost", f"physical interface {name} has no carrier")]
    return []
