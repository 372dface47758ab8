"""Plans: the netlink operations a command performs, as data.

A dry run returns ``describe()`` of each step; a real run applies them in order and, when a step
fails, undoes the steps already done in reverse order before the error goes out: nothing half-done.
Steps name devices, not indexes: a master created two steps earlier has no index yet at planning time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from kvmworker.netplane.netlink import Netlink
from kvmworker.netplane.reader import Link
from kvmworker.protocol.errors import DeviceNotFound

log = logging.getLogger("kvmworker.netplane")

Undo = Callable[[], None]


class Step(Protocol):
    def describe(self) -> dict[str, Any]: ...
    def apply(self, nl: Netlink) -> Undo: ...


@dataclass(frozen=True)
class AddLink:
    """Create a device, tag it with ``alias``, bring it to ``state``; undone by deleting it."""

    name: str
    kind: str
    alias: str
    state: str = "up"
    mtu: int | None = None
    mac: str | None = None
    master: str | None = None
    link: str | None = None
    vlan_id: int | None = None
    vni: int | None = None
    peer: str | None = None

    def describe(self) -> dict[str, Any]:
        return _describe("link_add", self)

    def apply(self, nl: Netlink) -> Undo:
        nl.add_link(self.name, self._kernel_kind(), **self._attrs(nl))
        try:
            nl.set_link(self.name, ifalias=self.alias, state=self.state)  # a tap ignores the state it is made with
            if self.peer:
                nl.set_link(self.peer, ifalias=self.alias, state=self.state)
        except Exception:
            _quietly(lambda: nl.delete_link(self.name), f"removing half-made {self.name}")
            raise
        return lambda: nl.delete_link(self.name)

    def _kernel_kind(self) -> str:
        return "tuntap" if self.kind == "tap" else self.kind

    def _attrs(self, nl: Netlink) -> dict[str, Any]:
        attrs: dict[str, Any] = {"state": self.state}
        if self.mtu is not None:
            attrs["mtu"] = self.mtu
        if self.mac is not None:
            attrs["address"] = self.mac
        if self.master is not None:
            attrs["master"] = _index_of(nl, self.master)
        if self.kind == "vlan":
            attrs |= {"link": _index_of(nl, self.link), "vlan_id": self.vlan_id}
        elif self.kind == "vxlan":
            attrs |= {"vxlan_id": self.vni, "vxlan_port": 4789}
            if self.link:
                attrs["vxlan_link"] = _index_of(nl, self.link)
        elif self.kind == "veth":
            attrs["peer"] = self.peer
        elif self.kind == "tap":
            attrs["mode"] = "tap"
        return attrs


_UNSET: Any = object()


@dataclass(frozen=True)
class SetLink:
    """Change some properties of a device; undone by putting back what was there before."""

    name: str
    state: str | None = None
    mtu: int | None = None
    mac: str | None = None
    master: str | None = _UNSET
    """A bridge name, None to release, or unset to leave alone."""
    alias: str | None = None
    netns: str | None = None

    def describe(self) -> dict[str, Any]:
        out = _describe("link_set", self)
        if self.master is not _UNSET:
            out["master"] = self.master
        return out

    def apply(self, nl: Netlink) -> Undo:
        before = nl.link(self.name)
        if before is None:
            raise DeviceNotFound(f"{self.name} does not exist", field="name")
        nl.set_link(self.name, **self._attrs(nl))
        if self.netns is not None:
            return lambda: None  # moved away: whoever moves it back does so in the other namespace
        return lambda: nl.set_link(self.name, **_restore(before, self))

    def _attrs(self, nl: Netlink) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.state is not None:
            attrs["state"] = self.state
        if self.mtu is not None:
            attrs["mtu"] = self.mtu
        if self.mac is not None:
            attrs["address"] = self.mac
        if self.alias is not None:
            attrs["ifalias"] = self.alias
        if self.master is not _UNSET:
            attrs["master"] = 0 if self.master is None else _index_of(nl, self.master)
        if self.netns is not None:
            attrs["net_ns_fd"] = self.netns
        return attrs


@dataclass(frozen=True)
class DeleteLink:
    """Delete a device; undone by making it again from ``recreate`` when the plan knows how."""

    name: str
    recreate: AddLink | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"op": "link_del", "name": self.name}

    def apply(self, nl: Netlink) -> Undo:
        nl.delete_link(self.name)
        recreate = self.recreate
        if recreate is None:
            return lambda: None

        def undo() -> None:
            recreate.apply(nl)

        return undo


@dataclass(frozen=True)
class AddAddress:
    name: str
    address: str

    def describe(self) -> dict[str, Any]:
        return {"op": "addr_add", "name": self.name, "address": self.address}

    def apply(self, nl: Netlink) -> Undo:
        index = _index_of(nl, self.name)
        nl.add_address(index, self.address)
        return lambda: nl.delete_address(index, self.address)


@dataclass(frozen=True)
class DeleteAddress:
    name: str
    address: str

    def describe(self) -> dict[str, Any]:
        return {"op": "addr_del", "name": self.name, "address": self.address}

    def apply(self, nl: Netlink) -> Undo:
        index = _index_of(nl, self.name)
        nl.delete_address(index, self.address)
        return lambda: nl.add_address(index, self.address)


def describe(steps: Iterable[Step]) -> list[dict[str, Any]]:
    return [step.describe() for step in steps]


def execute(steps: Iterable[Step], nl: Netlink, commit: Callable[[], None] | None = None) -> None:
    """Apply every step, then ``commit`` (e.g. remember the result), or none of it: on a failure the
    finished steps are undone newest first and the error goes on."""
    undo: list[tuple[Step, Undo]] = []
    try:
        for step in steps:
            undo.append((step, step.apply(nl)))
        if commit is not None:
            commit()
    except BaseException:
        for step, revert in reversed(undo):
            _quietly(revert, f"undoing {step.describe()}")
        raise


def _quietly(action: Undo, what: str) -> None:
    """Used only while another error is on its way out: that error is the one the caller needs."""
    try:
        action()
    except Exception:
        log.exception("rollback step failed while %s; the device may need a manual look", what)


def _index_of(nl: Netlink, name: str | None) -> int:
    link = nl.link(name) if name else None
    if link is None:
        raise DeviceNotFound(f"{name} does not exist")
    return link.index


def _describe(op: str, step: object) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op}
    for f in fields(step):  # type: ignore[arg-type]
        value = getattr(step, f.name)
        if f.repr and value is not None and value is not _UNSET:
            out[f.name] = value
    return out


def _restore(before: Link, change: SetLink) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if change.state is not None:
        attrs["state"] = "up" if before.up else "down"
    if change.mtu is not None:
        attrs["mtu"] = before.mtu
    if change.mac is not None and before.mac:
        attrs["address"] = before.mac
    if change.alias is not None:
        attrs["ifalias"] = before.alias or ""
    if change.master is not _UNSET:
        attrs["master"] = before.master
    return attrs
