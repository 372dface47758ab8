"""VmHandler: VM lifecycle through the worker's one libvirt connection (INTERFACE §3)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.protocol.errors import (
    InvalidParameter,
    OperationNotAllowed,
    VmInfoFailed,
    VmShutdownFailed,
)
from kvmworker.settings import Settings
from kvmworker.virt import description, domains
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.domain_xml import bridge_of, domain_xml, interface_xml
from kvmworker.virt.requests import (
    AttachInterfaceData,
    AutostartData,
    DefineData,
    DetachInterfaceData,
    ListData,
    ShutdownData,
    UndefineData,
    vm_key,
)
from kvmworker.virt.spec import DomainSpec, InterfaceSpec, VmRef
from kvmworker.virt.states import LIST_FLAGS, state_name
from kvmworker.virt.storage import Disk, Pools, StorageRules

REPLY_MARGIN = 1.0
"""Seconds kept back from the caller's deadline to send the reply."""


class VmHandler:
    name = "VmHandler"

    def __init__(self, connection: LibvirtConnection, storage: StorageRules, owns_connection: bool = True):
        self.connection = connection
        self._storage = storage
        self._owns_connection = owns_connection

    def close(self) -> None:
        if self._owns_connection:
            self.connection.close()

    @command(ListData, mutates=False)
    def list(self, data: ListData, ctx: Context) -> dict[str, Any]:
        flags = LIST_FLAGS[data.state] if data.state else 0
        with self._session() as conn:
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, flags)
        vms = [domains.summary(dom, record) for dom, record in stats]
        return {"vms": vms, "count": len(vms)}

    @command(VmRef, resource=vm_key, mutates=False)
    def info(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            try:
                return domains.info(dom)
            except libvirt.libvirtError as exc:
                # A lost connection stays 30009 and a VM undefined meanwhile 30007; the rest is 40502.
                if not conn.isAlive() or exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                raise VmInfoFailed(f"reading {data.label}: {exc.get_error_message()}") from None

    @command(VmRef, resource=vm_key, mutates=False)
    def console(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            root = description.parse(dom.XMLDesc(0))
            return {
                **domains.identity(dom),
                "graphics": description.graphics(root),
                "consoles": description.consoles(root),
            }

    @command(VmRef, resource=vm_key, idempotent=True)
    def start(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "start", domains.start)

    @command(VmRef, resource=vm_key, idempotent=True)
    def destroy(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "destroy (power off at once)", domains.destroy)

    @command(VmRef, resource=vm_key)
    def reboot(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "reboot (ACPI)", domains.reboot)

    @command(VmRef, resource=vm_key, idempotent=True)
    def suspend(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "suspend (pause the vCPUs)", domains.suspend)

    @command(VmRef, resource=vm_key, idempotent=True)
    def resume(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, "resume", domains.resume)

    @command(ShutdownData, resource=vm_key, idempotent=True)
    def shutdown(self, data: ShutdownData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if ctx.dry_run:
                then = "destroy it" if data.force else "answer 30008"
                return _plan(f"shutdown {dom.name()} (ACPI), wait up to {data.timeout:g} s, then {then}")
            if not dom.isActive():
                return {**domains.identity(dom), "state": "shutoff", "changed": False}
            return self._shutdown(dom, data, _wait_budget(data.timeout, ctx.deadline))

    @command(AutostartData, resource=vm_key, idempotent=True)
    def autostart(self, data: AutostartData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if ctx.dry_run:
                return _plan(f"set autostart of {dom.name()} to {data.enabled}")
            dom.setAutostart(int(data.enabled))
            return {**domains.identity(dom), "autostart": bool(dom.autostart())}

    @command(DefineData, resource=lambda d: f"vm:{d.name}")
    def define(self, data: DefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            if data.xml is not None:
                return self._define_xml(conn, data.xml, ctx)
            return self._define_spec(conn, data.spec(), ctx)

    @command(UndefineData, resource=vm_key)
    def undefine(self, data: UndefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if dom.isActive():
                raise OperationNotAllowed(f"{dom.name()} is running: shut it down or destroy it first")
            created = description.created_volumes(description.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
            removing = created if data.remove_storage else []
            if ctx.dry_run:
                return _plan(f"undefine {dom.name()}", *(f"delete volume {path}" for path in removing))
            identity = domains.identity(dom)
            domains.undefine(dom)
            removed = [p for p in removing if Pools(conn, self._storage).delete_path(p)]
            return {**identity, "undefined": True, "removed_volumes": removed}

    @command(AttachInterfaceData, resource=vm_key)
    def attach_interface(self, data: AttachInterfaceData, ctx: Context) -> dict[str, Any]:
        nic = InterfaceSpec.model_validate(data.model_dump(include=set(InterfaceSpec.model_fields)))
        nic = nic.model_copy(update={"mac": nic.mac or domains.random_mac()})
        xml = interface_xml(nic)
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if ctx.dry_run:
                return {**_plan(f"attach to {dom.name()}"), "xml": xml}
            if dom.isActive():
                domains.require_bridge(conn, bridge_of(nic))
            dom.attachDeviceFlags(xml, domains.device_flags(dom))
            return {**domains.identity(dom), "mac": nic.mac, "bridge": bridge_of(nic)}

    @command(DetachInterfaceData, resource=vm_key)
    def detach_interface(self, data: DetachInterfaceData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            element = domains.interface_by_mac(dom, data.mac)
            if ctx.dry_run:
                return _plan(f"detach interface {data.mac} from {dom.name()}")
            dom.detachDeviceFlags(ET.tostring(element, encoding="unicode"), domains.device_flags(dom))
            return {**domains.identity(dom), "mac": data.mac, "detached": True}

    def _transition(
        self, data: VmRef, ctx: Context, action: str, act: Callable[[libvirt.virDomain], bool]
    ) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if ctx.dry_run:
                return _plan(f"{action}: {dom.name()}")
            changed = act(dom)
            return {**domains.identity(dom), "state": state_name(dom.state()[0]), "changed": changed}

    def _shutdown(self, dom: libvirt.virDomain, data: ShutdownData, budget: float) -> dict[str, Any]:
        with self.connection.events.watch(dom.UUIDString()) as waiter:
            dom.shutdown()
            waiter.wait(budget)
        state = domains.state_or_gone(dom)
        if state == "shutoff":
            return {**domains.identity(dom), "state": state, "changed": True, "forced": False}
        if not data.force:
            raise VmShutdownFailed(
                f"{dom.name()} still {state} after {budget:g} s of ACPI shutdown",
                extra={"state": state, "name": dom.name(), "uuid": dom.UUIDString()},
            )
        dom.destroy()
        return {**domains.identity(dom), "state": domains.state_or_gone(dom), "changed": True, "forced": True}

    def _define_xml(self, conn: libvirt.virConnect, xml: str, ctx: Context) -> dict[str, Any]:
        root = ET.fromstring(xml)
        for i, path in enumerate(description.file_sources(root)):
            self._storage.check_file_source(path, field=f"xml.disk[{i}]")
        if ctx.dry_run:
            return {**_plan(f"define {root.findtext('name')} from the given XML"), "xml": xml}
        dom = conn.defineXML(xml)
        return {**domains.identity(dom), "defined": True}

    def _define_spec(self, conn: libvirt.virConnect, spec: DomainSpec, ctx: Context) -> dict[str, Any]:
        if domains.exists(conn, spec.name):
            raise InvalidParameter(f"a VM named {spec.name} is already defined; send xml to change it", field="name")
        disks = [self._disk(conn, spec, i) for i in range(len(spec.disks))]
        xml = domain_xml(spec, disks, spec.domain_type or domains.default_domain_type(conn))
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
        with domains.call_errors(), self.connection.session() as conn:
            yield conn


def _plan(*steps: str) -> dict[str, Any]:
    return {"dry_run": True, "plan": list(steps)}


def _wait_budget(timeout: float, deadline: float | None) -> float:
    """The requested wait, cut short so that the answer still reaches a caller who stops waiting earlier."""
    if deadline is None:
        return timeout
    return max(0.0, min(timeout, deadline - time.time() - REPLY_MARGIN))


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
    return {**domains.identity(dom), "defined": True}


def create_vm_handler(
    settings: Settings, features: dict[str, Callable[[], Any]], libvirt: LibvirtConnection | None = None
) -> VmHandler:
    """Constructing connects to nothing: the first command opens the connection.

    ``libvirt``: the worker's shared connection when the wiring has one (then the wiring closes it).
    """
    connection = libvirt or LibvirtConnection(settings.libvirt_uri)
    features["libvirt"] = connection.version
    storage = StorageRules(settings.storage_dirs, settings.storage_pool)
    return VmHandler(connection, storage, owns_connection=libvirt is None)
