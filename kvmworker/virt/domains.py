"""Operations on one libvirt domain, and libvirt's errors as the worker's coded errors."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.api.vm import VmRef
from kvmworker.protocol.errors import DeviceNotFound, InvalidParameter, OperationNotAllowed, VmNotFound
from kvmworker.virt import description
from kvmworker.virt.states import state_name


@contextmanager
def call_errors() -> Iterator[None]:
    """libvirt refusals that have a code in the table get it; anything else stays 99999, with its traceback."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc) from None


_INVALID_CONFIG = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_INVALID_ARG,
}


def translate(exc: libvirt.libvirtError) -> Exception:
    code, detail = exc.get_error_code(), exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return VmNotFound(detail)
    if code in _INVALID_CONFIG:
        return InvalidParameter(detail)
    if code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT):
        return OperationNotAllowed(detail)
    return exc


def lookup(conn: libvirt.virConnect, ref: VmRef) -> libvirt.virDomain:
    try:
        dom = conn.lookupByUUIDString(str(ref.uuid)) if ref.uuid else conn.lookupByName(ref.name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(f"no VM {ref.label}", field="uuid" if ref.uuid else "name") from None
        raise
    if ref.uuid and ref.name and dom.name() != ref.name:
        raise InvalidParameter(f"VM {ref.uuid} is named {dom.name()}, not {ref.name}", field="name")
    return dom


def exists(conn: libvirt.virConnect, name: str) -> bool:
    return find_by_name(conn, name) is not None


def exists_uuid(conn: libvirt.virConnect, uuid: str) -> bool:
    return find_by_uuid(conn, uuid) is not None


def find_by_name(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    return _find(conn.lookupByName, name)


def find_by_uuid(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    return _find(conn.lookupByUUIDString, uuid)


def _find(look: Callable[[str], libvirt.virDomain], key: str) -> libvirt.virDomain | None:
    try:
        return look(key)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def identity(dom: libvirt.virDomain) -> dict[str, Any]:
    return {"name": dom.name(), "uuid": dom.UUIDString()}


def summary(dom: libvirt.virDomain, record: dict[str, Any]) -> dict[str, Any]:
    dom_id = dom.ID()
    return {**identity(dom), "id": dom_id if dom_id >= 0 else None, "state": state_name(record["state.state"])}


def info(dom: libvirt.virDomain) -> dict[str, Any]:
    state, max_kib, mem_kib, vcpus, cpu_ns = dom.info()
    root = description.parse(dom.XMLDesc(0))
    dom_id = dom.ID()
    return {
        **identity(dom),
        "id": dom_id if dom_id >= 0 else None,
        "state": state_name(state),
        "vcpus": vcpus,
        "memory_mib": mem_kib // 1024,
        "max_memory_mib": max_kib // 1024,
        "cpu_time_ns": cpu_ns,
        "persistent": bool(dom.isPersistent()),
        "autostart": bool(dom.autostart()) if dom.isPersistent() else False,
        "interfaces": description.interfaces(root),
        "disks": [{**disk, "capacity": _capacity(dom, disk["target"])} for disk in description.disks(root)],
        "graphics": description.graphics(root),
        "consoles": description.consoles(root),
    }


def _capacity(dom: libvirt.virDomain, target: str | None) -> int | None:
    # An empty cdrom or a network disk has no size to report; that is not a failure of info.
    if not target:
        return None
    try:
        return dom.blockInfo(target)[0]
    except libvirt.libvirtError:
        return None


def start(dom: libvirt.virDomain) -> bool:
    if dom.isActive():
        return False
    require_bridges(dom)
    dom.create()
    return True


def require_bridges(dom: libvirt.virDomain) -> None:
    """A NIC's bridge must exist before start; libvirt's own failure would not say which code applies."""
    conn = dom.connect()
    root = description.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for nic in description.interfaces(root):
        if nic["type"] == "bridge" and nic["bridge"]:
            require_bridge(conn, nic["bridge"])


def require_bridge(conn: libvirt.virConnect, bridge: str) -> None:
    if not _interface_exists(conn, bridge):
        raise DeviceNotFound(f"bridge {bridge} does not exist: create its network first", field="bridge")


def _interface_exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.interfaceLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_INTERFACE:
            return False
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return True  # no interface driver: let libvirt's start be the judge
        raise
    return True


def destroy(dom: libvirt.virDomain) -> bool:
    if not dom.isActive():
        return False
    dom.destroy()
    return True


def reboot(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "reboot")
    dom.reboot(0)
    return True


def suspend(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "suspend")
    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        return False
    dom.suspend()
    return True


def resume(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "resume")
    if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
        return False
    dom.resume()
    return True


def _require_active(dom: libvirt.virDomain, action: str) -> None:
    if not dom.isActive():
        raise OperationNotAllowed(f"cannot {action} {dom.name()}: it is not running")


def state_or_gone(dom: libvirt.virDomain) -> str:
    """A transient domain disappears when it stops: that is shut off, not 'not found'."""
    try:
        return state_name(dom.state()[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "shutoff"
        raise


def undefine(dom: libvirt.virDomain) -> None:
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    try:
        dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        # Drivers without NVRAM support refuse that flag; nothing of the kind can exist there.
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefineFlags(flags)


def device_flags(dom: libvirt.virDomain) -> int:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
    return flags | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)


def interface_by_mac(dom: libvirt.virDomain, mac: str) -> ET.Element:
    flags = 0 if dom.isActive() else libvirt.VIR_DOMAIN_XML_INACTIVE
    for element in description.parse(dom.XMLDesc(flags)).iterfind("devices/interface"):
        found = element.find("mac")
        if found is not None and found.get("address", "").lower() == mac:
            return element
    raise DeviceNotFound(f"{dom.name()} has no interface with MAC {mac}", field="mac")


def random_mac() -> str:
    # 52:54:00 is the prefix QEMU/libvirt use for generated addresses; chosen here so the reply can name it.
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def default_domain_type(conn: libvirt.virConnect) -> str:
    """kvm when the host offers it, else qemu (TCG), else the driver's own (``test``)."""
    offered = {el.get("type") for el in ET.fromstring(conn.getCapabilities()).iterfind("guest/arch/domain")}
    return next((t for t in ("kvm", "qemu") if t in offered), sorted(offered)[0] if offered else "qemu")


def emulators(conn: libvirt.virConnect) -> frozenset[str]:
    """The QEMU binaries libvirt itself reports for this host: the only ones raw XML may name."""
    caps = ET.fromstring(conn.getCapabilities())
    return frozenset(el.text for el in caps.iterfind("guest/arch/emulator") if el.text)
