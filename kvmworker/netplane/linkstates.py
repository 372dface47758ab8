"""The links of the worker's namespace as the watch knows them, and the ``link.state`` events their changes make.

Every link is kept (a network's health needs its bridge and ports, whoever made them), but events are published
only about the links an orchestrator cares for: physical interfaces (by the ``--physical-interfaces`` policy:
the configured ones, else any NIC, bond or team that is not the loopback) and the devices this worker made
(ifalias tagged ``kvmworker:``). Not every veth, tap or container interface of the host.

States: ``added`` (with the device's state in ``data``), ``removed``, and ``up``/``down`` when the device's
operational state changes: ``up`` is administratively up *with carrier*, so a cable pulled, a veth whose peer
went down, or an interface set down all read ``down``. A device made by the worker is first seen untagged (its
tag is set right after it is created): it is ``added`` when the tag appears. A rename is ``removed`` under the
old name and ``added`` under the new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvmworker.netplane.changes import Changes
from kvmworker.netplane.devices import device_data
from kvmworker.netplane.monitor import LinkChange
from kvmworker.netplane.naming import is_owned
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.reader import Link
from kvmworker.netplane.sink import EventSink

SOURCE, KIND = "link", "state"
_GONE_KEPT = 256


def operational(link: Link) -> str:
    return "up" if link.up and link.carrier else "down"


class LinkStates:
    """Owned by the watch's thread: not thread-safe."""

    def __init__(self, physical: PhysicalInterfaces, emitter: EventSink, changes: Changes):
        self._physical = physical
        self._emitter = emitter
        self._changes = changes
        self._links: dict[int, Link] = {}
        self._by_name: dict[str, int] = {}
        self._reported: dict[int, str] = {}
        """Watched links (by index) and the state last published about each."""
        self._parents: dict[int, int] = {}
        self._gone: dict[int, str] = {}
        """Names of the links removed last, by index."""

    def lookup(self, name: str) -> Link | None:
        index = self._by_name.get(name)
        return None if index is None else self._links.get(index)

    def watched(self, link: Link) -> bool:
        return is_owned(link.alias) or self._physical.permits(link)

    def baseline(self, links: Iterable[Link]) -> None:
        """What the kernel has when watching starts: known, nothing published (``online`` has the picture)."""
        for link in links:
            self._store(link)
            if self.watched(link):
                self._reported[link.index] = operational(link)

    def reconcile(self, links: Iterable[Link]) -> set[str]:
        """After lost notifications: publish what changed between what was known and ``links`` (a fresh dump).
        Returns the names whose links changed."""
        fresh = {link.index: link for link in links}
        touched: set[str] = set()
        for index in [i for i in self._links if i not in fresh]:
            touched |= self.apply(LinkChange(self._links[index], removed=True))
        for link in fresh.values():
            if link != self._links.get(link.index):
                touched |= self.apply(LinkChange(link))
        return touched

    def apply(self, change: LinkChange) -> set[str]:
        """One notification: update what is known, publish what an orchestrator needs to hear.
        Returns the device names concerned (the old and the new name of a renamed one)."""
        link = change.link
        old = self._links.get(link.index)
        if change.removed:
            if link.index in self._reported:
                self._publish(old or link, "removed", previous=self._reported.pop(link.index))
            self._forget(link.index)
            return {link.name} | ({old.name} if old else set())
        self._store(link)
        if old is not None and old.name != link.name and link.index in self._reported:
            self._publish(old, "removed", previous=self._reported.pop(link.index), data={"renamed_to": link.name})
        self._follow(link)
        return {link.name} | ({old.name} if old else set())

    def _follow(self, link: Link) -> None:
        before = self._reported.get(link.index)
        if not self.watched(link):
            self._reported.pop(link.index, None)  # untagged behind our back: no longer ours to report
            return
        now = operational(link)
        self._reported[link.index] = now
        if before is None:
            self._publish(link, "added")
        elif before != now:
            self._publish(link, now, previous=before)

    def _publish(self, link: Link, state: str, previous: str | None = None, data: dict[str, Any] | None = None) -> None:
        device = device_data(link, self._name_of) | {"carrier": link.carrier, "operational": operational(link)}
        msg_id = self._changes.cause(link.name) or self._cause_of_parent(link)
        self._emitter.emit(SOURCE, KIND, link.name, state, previous=previous, msg_id=msg_id, data=device | (data or {}))

    def _cause_of_parent(self, link: Link) -> str | None:
        """A veth's peer goes with it, a vlan with its lower device: a command on one changes the other."""
        parent = self._parents.get(link.index)
        name = self._name_of(parent) if parent else None
        return self._changes.cause(name) if name else None

    def _name_of(self, index: int) -> str | None:
        link = self._links.get(index)
        return link.name if link else self._gone.get(index)

    def _store(self, link: Link) -> None:
        old = self._links.get(link.index)
        if old is not None and old.name != link.name and self._by_name.get(old.name) == link.index:
            del self._by_name[old.name]
        self._links[link.index] = link
        self._by_name[link.name] = link.index
        if link.parent and link.parent != link.index:  # kept: a veth being deleted stops naming its peer
            self._parents[link.index] = link.parent

    def _forget(self, index: int) -> None:
        old = self._links.pop(index, None)
        if old is not None and self._by_name.get(old.name) == index:
            del self._by_name[old.name]
        if old is not None:  # a veth's peer is removed right after it: its name is still needed then
            self._gone[index] = old.name
            if len(self._gone) > _GONE_KEPT:
                del self._gone[next(iter(self._gone))]
        self._parents.pop(index, None)
