"""Internal (qcow2) snapshots of one domain: create, list as a tree, revert, delete.

Why internal: Debian 12 ships libvirt 9.0, and libvirt reverts external snapshots only from 9.9 on. An internal
snapshot lives inside each qcow2 disk (and, for a running VM, its RAM in the same file), so libvirt 9.0 creates,
reverts and deletes it without the worker managing overlay files. The cost: every disk must be qcow2, and a
running VM's snapshot always includes its memory (QEMU's savevm); a disk-only snapshot of a running VM would be
external, which this libvirt could not revert, so it is refused (30004) rather than taken and left unrevertable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.api.vm import SnapshotCreateData
from kvmworker.protocol.errors import InvalidParameter, OperationNotAllowed, SnapshotNotFound
from kvmworker.virt.states import state_name

AGENT_CHANNEL = "org.qemu.guest_agent.0"
FREEZE_TIMEOUT_S = 10.0


def find(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise SnapshotNotFound(f"{dom.name()} has no snapshot {name}", field="snapshot") from None
        raise


def existing(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    try:
        return find(dom, name)
    except SnapshotNotFound:
        return None


def check_creatable(dom: libvirt.virDomain, data: SnapshotCreateData) -> None:
    """What ``create`` refuses, before anything changes (the dry run checks the same)."""
    active = bool(dom.isActive())
    if data.memory and not active:
        raise OperationNotAllowed(f"{dom.name()} is not running: a snapshot with memory needs a running VM")
    if active and not data.memory:
        raise OperationNotAllowed(
            f"{dom.name()} is running: its snapshot must include memory (send memory: true) or the VM must be "
            "stopped; a disk-only snapshot of a running VM would be external, which libvirt < 9.9 cannot revert",
            field="memory",
        )
    if data.quiesce:
        require_agent(dom)


def require_agent(dom: libvirt.virDomain) -> None:
    """Quiesce needs a connected QEMU guest agent: without one the snapshot is refused, never taken unfrozen."""
    if not dom.isActive():
        raise OperationNotAllowed(f"{dom.name()} is not running: there is no guest agent to quiesce", field="quiesce")
    root = ET.fromstring(dom.XMLDesc(0))
    for channel in root.iterfind("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == AGENT_CHANNEL:
            if target.get("state") == "connected":
                return
            raise OperationNotAllowed(
                f"{dom.name()}'s guest agent is not connected (is qemu-guest-agent running in the guest?)",
                field="quiesce",
            )
    raise OperationNotAllowed(
        f"{dom.name()} has no guest agent channel ({AGENT_CHANNEL}): it cannot be quiesced", field="quiesce"
    )


def create(dom: libvirt.virDomain, data: SnapshotCreateData, freeze_timeout: float = FREEZE_TIMEOUT_S) -> dict:
    found = existing(dom, data.snapshot)
    if found is not None:
        return {**_same_or_refuse(found, data), "changed": False}
    check_creatable(dom, data)
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = data.snapshot
    if data.description:
        ET.SubElement(root, "description").text = data.description
    ET.SubElement(root, "memory", snapshot="internal" if data.memory else "no")
    xml = ET.tostring(root, encoding="unicode")
    if data.quiesce:
        with _frozen(dom, freeze_timeout):
            snap = dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
    else:
        snap = dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
    return {**describe(snap), "changed": True}


def _same_or_refuse(snap: libvirt.virDomainSnapshot, data: SnapshotCreateData) -> dict[str, Any]:
    """A repeat of the same create is success; the same name asked with other contents is not."""
    described = describe(snap)
    if described["memory"] != data.memory:
        raise InvalidParameter(
            f"snapshot {data.snapshot} exists {'with' if described['memory'] else 'without'} memory", field="snapshot"
        )
    return described


class _frozen:
    """The guest's filesystems frozen through the agent; the freeze is bounded here, outside libvirt's call
    (an agent that never answers would otherwise hold the command forever, vdsm#160)."""

    def __init__(self, dom: libvirt.virDomain, timeout: float):
        self.dom, self.timeout = dom, timeout

    def __enter__(self) -> None:
        call = _Bounded(lambda: self.dom.fsFreeze(None, 0))
        if not call.wait(self.timeout):
            _in_background(self.dom.fsThaw)  # should the freeze land late, it must not stay
            raise OperationNotAllowed(
                f"{self.dom.name()}'s guest agent did not freeze its filesystems within {self.timeout:g} s",
                field="quiesce",
            )
        try:
            call.result()
        except libvirt.libvirtError as exc:
            raise OperationNotAllowed(
                f"{self.dom.name()}'s guest agent could not freeze its filesystems: {exc.get_error_message()}",
                field="quiesce",
            ) from None

    def __exit__(self, *exc: object) -> None:
        thaw = _Bounded(lambda: self.dom.fsThaw(None, 0))
        thaw.wait(self.timeout)


class _Bounded:
    """One blocking libvirt call on its own daemon thread, waited for with a deadline."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="kvmworker-bounded", daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to the waiter
            self._error = exc
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def _in_background(fn: Callable[..., Any]) -> None:
    def run() -> None:
        try:
            fn(None, 0)
        except libvirt.libvirtError:
            return

    threading.Thread(target=run, name="kvmworker-thaw", daemon=True).start()


def describe(snap: libvirt.virDomainSnapshot) -> dict[str, Any]:
    root = ET.fromstring(snap.getXMLDesc(0))
    memory = root.find("memory")
    state = root.findtext("state") or ""
    with_memory = memory.get("snapshot") in ("internal", "external") if memory is not None else state == "running"
    created = int(root.findtext("creationTime") or 0)
    return {
        "snapshot": root.findtext("name"),
        "parent": root.findtext("parent/name"),
        "created_at": datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z"),
        "state": state,
        "memory": bool(with_memory),
        "description": root.findtext("description"),
    }


def listing(dom: libvirt.virDomain) -> list[dict[str, Any]]:
    current = dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None
    snaps = [{**describe(s), "current": s.getName() == current} for s in dom.listAllSnapshots(0)]
    return _parents_first(sorted(snaps, key=lambda s: (s["created_at"], s["snapshot"])))


def _parents_first(snaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first, but never a snapshot before its parent (creation times have whole seconds only)."""
    names = {s["snapshot"] for s in snaps}
    placed: set[str | None] = set()
    ordered: list[dict[str, Any]] = []
    waiting = snaps
    while waiting:
        ready = [s for s in waiting if s["parent"] in placed or s["parent"] not in names]
        if not ready:  # a cycle libvirt would never report: keep the rest as they are
            return ordered + waiting
        ordered += ready
        placed |= {s["snapshot"] for s in ready}
        waiting = [s for s in waiting if s["snapshot"] not in placed]
    return ordered


def revert(dom: libvirt.virDomain, name: str, thaw_timeout: float = FREEZE_TIMEOUT_S) -> dict[str, Any]:
    snap = find(dom, name)
    dom.revertToSnapshot(snap, 0)
    if dom.isActive():
        _thaw_if_agent(dom, thaw_timeout)
    return {"snapshot": name, "state": state_name(dom.state()[0])}


def _thaw_if_agent(dom: libvirt.virDomain, timeout: float) -> None:
    """A snapshot taken quiesced holds a guest whose filesystems were frozen at that instant: thaw them."""
    try:
        require_agent(dom)
    except OperationNotAllowed:
        return
    _Bounded(lambda: dom.fsThaw(None, 0)).wait(timeout)


def deletable(dom: libvirt.virDomain, name: str, children: bool) -> tuple[libvirt.virDomainSnapshot, list[str]]:
    """The snapshot and the names of its descendants (deleted with it); descendants without ``children`` → 30004."""
    snap = find(dom, name)
    below = [s.getName() for s in snap.listAllChildren(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS)]
    if below and not children:
        raise OperationNotAllowed(
            f"snapshot {name} of {dom.name()} has {len(below)} descendant(s) ({', '.join(sorted(below))}): "
            "send children: true to delete them too",
            field="children",
        )
    return snap, sorted(below)


def delete(dom: libvirt.virDomain, name: str, children: bool) -> dict[str, Any]:
    snap, below = deletable(dom, name, children)
    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if below else 0)
    return {"snapshot": name, "deleted": [name, *below]}
