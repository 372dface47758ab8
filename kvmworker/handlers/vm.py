"""VmHandler: VM lifecycle through the worker's one libvirt connection (INTERFACE §3)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree as ET

import libvirt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import (
    DeviceNotFound,
    InvalidParameter,
    OperationNotAllowed,
    VmInfoFailed,
    VmNotFound,
    VmShutdownFailed,
)
from kvmworker.protocol.types import MacAddress, coded
from kvmworker.settings import Settings
from kvmworker.virt import description
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.domain_xml import domain_xml, interface_xml
from kvmworker.virt.spec import DomainSpec, InterfaceSpec, VmName, VmRef
from kvmworker.virt.states import LIST_FLAGS, StateFilter, state_name
from kvmworker.virt.storage import Disk, Pools, StorageRules

MAX_XML = 256 * 1024
REPLY_MARGIN = 1.0
"""Seconds kept back from the caller's deadline to send the reply."""


class ListData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: StateFilter | None = None


class ShutdownData(VmRef):
    timeout: float = Field(default=60.0, gt=0, le=3600)
    force: bool = False


class AutostartData(VmRef):
    enabled: bool


class UndefineData(VmRef):
    remove_storage: bool = False


class AttachInterfaceData(VmRef, InterfaceSpec):
    model_config = ConfigDict(extra="ignore")


class DetachInterfaceData(VmRef):
    mac: MacAddress


class DefineData(DomainSpec):
    """Either ``xml`` (raw domain XML) or the structured spec's fields."""

    model_config = ConfigDict(extra="forbid")

    xml: str | None = Field(default=None, max_length=MAX_XML)
    name: VmName | None = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _xml_or_spec(self) -> DefineData:
        if self.xml is None and self.name is None:
            raise coded(Code.INVALID_PARAMETER, "send 'xml' or a structured spec with at least 'name'")
        if self.xml is not None:
            self.name = _xml_name(self.xml)
        return self

    def spec(self) -> DomainSpec:
        return DomainSpec.model_validate(self.model_dump(exclude={"xml"}))


def _xml_name(xml: str) -> str:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise coded(Code.INVALID_PARAMETER, f"xml is not well-formed: {exc}") from None
    name = root.findtext("name")
    if root.tag != "domain" or not name:
        raise coded(Code.INVALID_PARAMETER, "xml must be a <domain> with a <name>")
    return name


def _vm(data: VmRef) -> str:
    return data.key


class VmHandler:
    name = "VmHandler"

    def __init__(self, connection: LibvirtConnection, storage: StorageRules):
        self._libvirt = connection
        self._storage = storage

    def close(self) -> None:
        self._libvirt.close()

    @command(ListData, mutates=False)
    def list(self, data: ListData, ctx: Context) -> dict[str, Any]:
        flags = LIST_FLAGS[data.state] if data.state else 0
        with self._session() as conn:
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, flags)
        vms = [_summary(dom, record) for dom, record in stats]
        return {"vms": vms, "count": len(vms)}

    @command(VmRef, resource=_vm, mutates=False)
    def info(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            try:
                return _info(dom)
            except libvirt.libvirtError as exc:
                if not conn.isAlive():
                    raise
                raise VmInfoFailed(f"reading {data.label}: {exc.get_error_message()}") from None

    @command(VmRef, resource=_vm, mutates=False)
    def console(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            root = description.parse(dom.XMLDesc(0))
            return {**_identity(dom), "graphics": description.graphics(root), "consoles": description.consoles(root)}

    @command(VmRef, resource=_vm)
    def start(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "start", _start)

    @command(VmRef, resource=_vm)
    def destroy(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "destroy (power off at once)", _destroy)

    @command(VmRef, resource=_vm)
    def reboot(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "reboot (ACPI)", _reboot)

    @command(VmRef, resource=_vm)
    def suspend(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "suspend (pause the vCPUs)", _suspend)

    @command(VmRef, resource=_vm)
    def resume(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "resume", _resume)

    @command(ShutdownData, resource=_vm)
    def shutdown(self, data: ShutdownData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            if ctx.dry_run:
                then = "destroy it" if data.force else "answer 30008"
                return _plan(f"shutdown {dom.name()} (ACPI), wait up to {data.timeout:g} s, then {then}")
            if not dom.isActive():
                return {**_identity(dom), "state": "shutoff", "changed": False}
            return self._shutdown(dom, data, _wait_budget(data.timeout, ctx.deadline))

    @command(AutostartData, resource=_vm)
    def autostart(self, data: AutostartData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            if ctx.dry_run:
                return _plan(f"set autostart of {dom.name()} to {data.enabled}")
            dom.setAutostart(int(data.enabled))
            return {**_identity(dom), "autostart": bool(dom.autostart())}

    @command(DefineData, resource=lambda d: f"vm:{d.name}")
    def define(self, data: DefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            if data.xml is not None:
                return self._define_xml(conn, data.xml, ctx)
            return self._define_spec(conn, data.spec(), ctx)

    @command(UndefineData, resource=_vm)
    def undefine(self, data: UndefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            if dom.isActive():
                raise OperationNotAllowed(f"{dom.name()} is running: shut it down or destroy it first")
            created = description.created_volumes(description.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
            removing = created if data.remove_storage else []
            if ctx.dry_run:
                return _plan(f"undefine {dom.name()}", *(f"delete volume {path}" for path in removing))
            identity = _identity(dom)
            _undefine(dom)
            removed = [p for p in removing if Pools(conn, self._storage).delete_path(p)]
            return {**identity, "undefined": True, "removed_volumes": removed}

    @command(AttachInterfaceData, resource=_vm)
    def attach_interface(self, data: AttachInterfaceData, ctx: Context) -> dict[str, Any]:
        nic = InterfaceSpec.model_validate(data.model_dump(include=set(InterfaceSpec.model_fields)))
        nic = nic.model_copy(update={"mac": nic.mac or _random_mac()})
        xml = interface_xml(nic)
        with self._session() as conn:
            dom = _lookup(conn, data)
            if ctx.dry_run:
                return {**_plan(f"attach to {dom.name()}"), "xml": xml}
            dom.attachDeviceFlags(xml, _device_flags(dom))
            return {**_identity(dom), "mac": nic.mac, "bridge": ET.fromstring(xml).find("source").get("bridge")}

    @command(DetachInterfaceData, resource=_vm)
    def detach_interface(self, data: DetachInterfaceData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            element = _interface_by_mac(dom, data.mac)
            if ctx.dry_run:
                return _plan(f"detach interface {data.mac} from {dom.name()}")
            dom.detachDeviceFlags(ET.tostring(element, encoding="unicode"), _device_flags(dom))
            return {**_identity(dom), "mac": data.mac, "detached": True}

    def _transition(
        self, data: VmRef, ctx: Context, action: str, act: Callable[[libvirt.virDomain], bool]
    ) -> dict[str, Any]:
        with self._session() as conn:
            dom = _lookup(conn, data)
            if ctx.dry_run:
                return _plan(f"{action}: {dom.name()}")
            changed = act(dom)
            return {**_identity(dom), "state": state_name(dom.state()[0]), "changed": changed}

    def _shutdown(self, dom: libvirt.virDomain, data: ShutdownData, budget: float) -> dict[str, Any]:
        with self._libvirt.events.watch(dom.UUIDString()) as waiter:
            dom.shutdown()
            waiter.wait(budget)
        state = _state_or_gone(dom)
        if state == "shutoff":
            return {**_identity(dom), "state": state, "changed": True, "forced": False}
        if not data.force:
            raise VmShutdownFailed(
                f"{dom.name()} still {state} after {budget:g} s of ACPI shutdown",
                extra={"state": state, "name": dom.name(), "uuid": dom.UUIDString()},
            )
        dom.destroy()
        return {**_identity(dom), "state": _state_or_gone(dom), "changed": True, "forced": True}

    def _define_xml(self, conn: libvirt.virConnect, xml: str, ctx: Context) -> dict[str, Any]:
        root = ET.fromstring(xml)
        for i, path in enumerate(description.file_sources(root)):
            self._storage.check_file_source(path, field=f"xml.disk[{i}]")
        if ctx.dry_run:
            return {**_plan(f"define {root.findtext('name')} from the given XML"), "xml": xml}
        dom = conn.defineXML(xml)
        return {**_identity(dom), "defined": True}

    def _define_spec(self, conn: libvirt.virConnect, spec: DomainSpec, ctx: Context) -> dict[str, Any]:
        if spec.name in {d.name() for d in conn.listAllDomains(0)}:
            raise InvalidParameter(f"a VM named {spec.name} is already defined; send xml to change it", field="name")
        disks = [self._disk(conn, spec, i) for i in range(len(spec.disks))]
        xml = domain_xml(spec, disks, spec.domain_type or _default_domain_type(conn))
        new = [d for d in disks if d.create_gib is not None]
        if ctx.dry_run:
            steps = [f"create {d.create_gib:g} GiB qcow2 volume {d.volume} in pool {d.pool}" for d in new]
            return {**_plan(*steps, f"define {spec.name}"), "xml": xml}
        return {**_define_with_volumes(conn, Pools(conn, self._storage), xml, new), "volumes": [d.path for d in new]}

    def _disk(self, conn: libvirt.virConnect, spec: DomainSpec, index: int) -> Disk:
        disk, field = spec.disks[index], f"disks.{index}"
        if disk.image is not None:
            return self._storage.image(disk.image, field=f"{field}.image")
        pools = Pools(conn, self._storage)
        if disk.size_gib is None:
            return pools.existing(disk.volume or "", disk.pool, field=f"{field}.volume")
        name = disk.volume or f"{spec.name}-disk{index}.qcow2"
        return pools.planned(name, disk.pool, disk.size_gib, field=f"{field}.volume")

    @contextmanager
    def _session(self) -> Iterator[libvirt.virConnect]:
        # The connection's session turns a broken connection into 30009 first; what is left is the call's fault.
        with _call_errors(), self._libvirt.session() as conn:
            yield conn


@contextmanager
def _call_errors() -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise _translate(exc) from None


_INVALID_CONFIG = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_INVALID_ARG,
}


def _translate(exc: libvirt.libvirtError) -> Exception:
    code, detail = exc.get_error_code(), exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return VmNotFound(detail)
    if code in _INVALID_CONFIG:
        return InvalidParameter(detail)
    if code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT):
        return OperationNotAllowed(detail)
    return exc


def _lookup(conn: libvirt.virConnect, ref: VmRef) -> libvirt.virDomain:
    try:
        dom = conn.lookupByUUIDString(str(ref.uuid)) if ref.uuid else conn.lookupByName(ref.name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(f"no VM {ref.label}", field="uuid" if ref.uuid else "name") from None
        raise
    if ref.uuid and ref.name and dom.name() != ref.name:
        raise InvalidParameter(f"VM {ref.uuid} is named {dom.name()}, not {ref.name}", field="name")
    return dom


def _identity(dom: libvirt.virDomain) -> dict[str, Any]:
    return {"name": dom.name(), "uuid": dom.UUIDString()}


def _plan(*steps: str) -> dict[str, Any]:
    return {"dry_run": True, "plan": list(steps)}


def _summary(dom: libvirt.virDomain, record: dict[str, Any]) -> dict[str, Any]:
    dom_id = dom.ID()
    return {**_identity(dom), "id": dom_id if dom_id >= 0 else None, "state": state_name(record["state.state"])}


def _info(dom: libvirt.virDomain) -> dict[str, Any]:
    state, max_kib, mem_kib, vcpus, cpu_ns = dom.info()
    root = description.parse(dom.XMLDesc(0))
    dom_id = dom.ID()
    return {
        **_identity(dom),
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


def _wait_budget(timeout: float, deadline: float | None) -> float:
    """The requested wait, cut short so that the answer still reaches a caller who stops waiting earlier."""
    if deadline is None:
        return timeout
    return max(0.0, min(timeout, deadline - time.time() - REPLY_MARGIN))


def _start(dom: libvirt.virDomain) -> bool:
    if dom.isActive():
        return False
    dom.create()
    return True


def _destroy(dom: libvirt.virDomain) -> bool:
    if not dom.isActive():
        return False
    dom.destroy()
    return True


def _reboot(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "reboot")
    dom.reboot(0)
    return True


def _suspend(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "suspend")
    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        return False
    dom.suspend()
    return True


def _resume(dom: libvirt.virDomain) -> bool:
    _require_active(dom, "resume")
    if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
        return False
    dom.resume()
    return True


def _require_active(dom: libvirt.virDomain, action: str) -> None:
    if not dom.isActive():
        raise OperationNotAllowed(f"cannot {action} {dom.name()}: it is not running")


def _state_or_gone(dom: libvirt.virDomain) -> str:
    """A transient domain disappears when it stops: that is shut off, not 'not found'."""
    try:
        return state_name(dom.state()[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "shutoff"
        raise


def _undefine(dom: libvirt.virDomain) -> None:
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    try:
        dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        # Drivers without NVRAM support refuse that flag; nothing of the kind can exist there.
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefineFlags(flags)


def _define_with_volumes(conn: libvirt.virConnect, pools: Pools, xml: str, new: list[Disk]) -> dict[str, Any]:
    created: list[str] = []
    try:
        for disk in new:
            created.append(pools.create(disk))
        dom = conn.defineXML(xml)
    except Exception:
        for path in created:
            pools.delete_path(path)
        raise
    return {**_identity(dom), "defined": True}


def _device_flags(dom: libvirt.virDomain) -> int:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
    return flags | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)


def _interface_by_mac(dom: libvirt.virDomain, mac: str) -> ET.Element:
    flags = 0 if dom.isActive() else libvirt.VIR_DOMAIN_XML_INACTIVE
    for element in description.parse(dom.XMLDesc(flags)).iterfind("devices/interface"):
        found = element.find("mac")
        if found is not None and found.get("address", "").lower() == mac:
            return element
    raise DeviceNotFound(f"{dom.name()} has no interface with MAC {mac}", field="mac")


def _random_mac() -> str:
    # 52:54:00 is the prefix QEMU/libvirt use for generated addresses; chosen here so the reply can name it.
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def _default_domain_type(conn: libvirt.virConnect) -> str:
    """kvm when the host offers it, else qemu (TCG), else the driver's own (``test``)."""
    offered = {el.get("type") for el in ET.fromstring(conn.getCapabilities()).iterfind("guest/arch/domain")}
    return next((t for t in ("kvm", "qemu") if t in offered), sorted(offered)[0] if offered else "qemu")


def create_vm_handler(settings: Settings, features: dict[str, Callable[[], Any]]) -> VmHandler:
    """Constructing connects to nothing: the first command opens the connection."""
    connection = LibvirtConnection(settings.libvirt_uri)
    features["libvirt"] = connection.version
    return VmHandler(connection, StorageRules(settings.storage_dirs, settings.storage_pool))
