"""VmHandler: VM lifecycle through the worker's one libvirt connection (INTERFACE §3)."""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.api.domain import DomainSpec, InterfaceSpec
from kvmworker.api.vm import (
    AttachInterfaceData,
    AutostartData,
    DefineData,
    DetachInterfaceData,
    ListData,
    MigrateData,
    ShutdownData,
    SnapshotCreateData,
    SnapshotDeleteData,
    SnapshotRef,
    StatsData,
    UndefineData,
    VmApi,
    VmRef,
)
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.events import Causes, Events
from kvmworker.events.model import OPERATION_DONE
from kvmworker.journal.query import Query
from kvmworker.journal.store import ANSWERED, INTERRUPTED, JournalStore
from kvmworker.protocol import safe_xml
from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import (
    Cancelled,
    InvalidParameter,
    MigrationFailed,
    OperationNotAllowed,
    VmInfoFailed,
    VmNotFound,
    VmShutdownFailed,
    VolumeNotFound,
)
from kvmworker.settings import Settings
from kvmworker.virt import description, domains, migration, policy, snapshots, vm_events, volumes
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.domain_xml import bridge_of, domain_xml, interface_xml
from kvmworker.virt.migration import Migrations, Templates
from kvmworker.virt.ownership import FILENAME as OWNERSHIP_FILE
from kvmworker.virt.ownership import OwnedVolume, VolumeRecords
from kvmworker.virt.states import LIST_FLAGS, state_name
from kvmworker.virt.stats import StatsReader
from kvmworker.virt.storage import GIB, Disk, Pools, StorageRules

log = logging.getLogger("kvmworker.vm")

REPLY_MARGIN = 1.0
"""Seconds kept back from the caller's deadline to send the reply."""


class Generated(NamedTuple):
    """A domain made from the structured spec: its XML (checked), the volumes it needs created, its uuid."""

    xml: str
    root: ET.Element
    uuid: str
    new: list[Disk]


class VmHandler(VmApi):
    def __init__(
        self,
        connection: LibvirtConnection,
        storage: StorageRules,
        owns_connection: bool = True,
        records: VolumeRecords | None = None,
        migrations: Migrations | None = None,
    ):
        self.connection = connection
        self._recovered: list[dict[str, Any]] = []
        self.migrations = migrations or Migrations("", Templates("qemu+tls://{host}/system"), 2, 150.0)
        self._storage = storage
        self._owns_connection = owns_connection
        self._records = records or VolumeRecords(None)
        self._causes = Causes()  # nobody asks it until the worker's events are given (use_events)
        # Calls that can last (a stats call a hung QEMU holds, a migration) go over connections of their own.
        self._long_calls = None if connection.local else connection.open_extra
        self.stats_reader = StatsReader(self._long_calls)
        self.freeze_timeout = snapshots.FREEZE_TIMEOUT_S

    def use_events(self, events: Events) -> None:
        """The worker publishes events: commands note what they change, and the VM event source starts."""
        self._causes = events.causes
        vm_events.start_vm_events(self.connection, events)
        for done in self._recovered:  # the outcome of migrations settled at start, told as their operation.done
            state = "done" if done["code"] == Code.OK else "failed"
            data = {"handler": "VmHandler", "command": "migrate", "code": done["code"], **done["data"]}
            events.emitter.emit(*OPERATION_DONE, done["msg_id"], state, msg_id=done["msg_id"], data=data)

    def close(self) -> None:
        self.stats_reader.close()
        self._records.close()
        if self._owns_connection:
            self.connection.close()

    def list(self, data: ListData, ctx: Context) -> dict[str, Any]:
        flags = LIST_FLAGS[data.state] if data.state else 0
        with self._session() as conn:
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, flags)
        vms = [domains.summary(dom, record) for dom, record in stats]
        return {"vms": vms, "count": len(vms)}

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

    def console(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            root = description.parse(dom.XMLDesc(0))
            return {
                **domains.identity(dom),
                "graphics": description.graphics(root),
                "consoles": description.consoles(root),
            }

    def start(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, domains.start, ("resumed", "started"))

    def plan_start(self, data: VmRef, ctx: Context) -> Plan:
        return self._plan_for(data, "start: {}")

    def destroy(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, domains.destroy, ("stopped",))

    def plan_destroy(self, data: VmRef, ctx: Context) -> Plan:
        return self._plan_for(data, "destroy (power off at once): {}")

    def reboot(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, domains.reboot, ("shutdown", "stopped", "resumed", "started"))

    def plan_reboot(self, data: VmRef, ctx: Context) -> Plan:
        return self._plan_for(data, "reboot (ACPI): {}")

    def suspend(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, domains.suspend, ("suspended",))

    def plan_suspend(self, data: VmRef, ctx: Context) -> Plan:
        return self._plan_for(data, "suspend (pause the vCPUs): {}")

    def resume(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        return self._transition(data, ctx, domains.resume, ("resumed",))

    def plan_resume(self, data: VmRef, ctx: Context) -> Plan:
        return self._plan_for(data, "resume: {}")

    def shutdown(self, data: ShutdownData, ctx: Context) -> dict[str, Any]:
        """ACPI shutdown, then wait for the guest to power off. Cancel (§8) ends the wait: the VM is not forced
        off and the reply is 30013 (the guest keeps the ACPI request, which it may still act on)."""
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if not dom.isActive():
                return {**domains.identity(dom), "state": "shutoff", "changed": False}
            with self._acting(dom.name(), ctx, "shutdown", "stopped"):
                return self._shutdown(dom, data, _wait_budget(data.timeout, ctx.deadline), ctx)

    def plan_shutdown(self, data: ShutdownData, ctx: Context) -> Plan:
        then = "destroy it" if data.force else "answer 30008"
        return self._plan_for(data, f"shutdown {{}} (ACPI), wait up to {data.timeout:g} s, then {then}")

    def autostart(self, data: AutostartData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            dom.setAutostart(int(data.enabled))
            return {**domains.identity(dom), "autostart": bool(dom.autostart())}

    def plan_autostart(self, data: AutostartData, ctx: Context) -> Plan:
        return self._plan_for(data, f"set autostart of {{}} to {data.enabled}")

    def define(self, data: DefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            if data.xml is not None:
                root = self._checked_xml(conn, data.xml)
                self._forget_stale_records(conn, root.findtext("uuid"))
                # libvirt gets the tree that was checked, re-serialized: never a byte the checker did not see.
                with self._acting(root.findtext("name") or "", ctx, "defined"):
                    dom = conn.defineXML(safe_xml.serialize(root))
                return {**domains.identity(dom), "defined": True}
            made = self._generated(conn, data.spec())
            with self._acting(data.name, ctx, "defined"):
                defined = _define_with_volumes(conn, Pools(conn, self._storage), self._records, made)
            return {**defined, "volumes": [d.path for d in made.new]}

    def plan_define(self, data: DefineData, ctx: Context) -> Plan:
        with self._session() as conn:
            if data.xml is not None:
                root = self._checked_xml(conn, data.xml)
                return Plan([f"define {root.findtext('name')} from the given XML"], {"xml": policy.masked(root)})
            made = self._generated(conn, data.spec())
        steps = [_create_step(d) for d in made.new]
        return Plan([*steps, f"define {data.name}"], {"xml": policy.masked(made.root)})

    def undefine(self, data: UndefineData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom, removing = self._undefinable(conn, data)
            uuid = dom.UUIDString()
            identity = domains.identity(dom)
            with self._acting(dom.name(), ctx, "undefined"):
                domains.undefine(dom)
            pools = Pools(conn, self._storage)
            removed = [owned.path for owned in removing if pools.delete_owned(owned)]
            self._records.forget(uuid)  # a volume kept now belongs to nobody: no later domain inherits it
            return {**identity, "undefined": True, "removed_volumes": removed}

    def plan_undefine(self, data: UndefineData, ctx: Context) -> Plan:
        with self._session() as conn:
            dom, removing = self._undefinable(conn, data)
            return Plan([f"undefine {dom.name()}", *(f"delete volume {owned.path}" for owned in removing)])

    def attach_interface(self, data: AttachInterfaceData, ctx: Context) -> dict[str, Any]:
        nic, xml = _interface(data)
        with self._session() as conn:
            dom = self._attachable(conn, data, xml)
            if dom.isActive():
                domains.require_bridge(conn, bridge_of(nic))
            with self._acting(dom.name(), ctx, "defined"):
                dom.attachDeviceFlags(xml, domains.device_flags(dom))
            return {**domains.identity(dom), "mac": nic.mac, "bridge": bridge_of(nic)}

    def plan_attach_interface(self, data: AttachInterfaceData, ctx: Context) -> Plan:
        _, xml = _interface(data)
        with self._session() as conn:
            dom = self._attachable(conn, data, xml)
            return Plan([f"attach to {dom.name()}"], {"xml": xml})

    def detach_interface(self, data: DetachInterfaceData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            element = domains.interface_by_mac(dom, data.mac)
            with self._acting(dom.name(), ctx, "defined"):
                dom.detachDeviceFlags(ET.tostring(element, encoding="unicode"), domains.device_flags(dom))
            return {**domains.identity(dom), "mac": data.mac, "detached": True}

    def plan_detach_interface(self, data: DetachInterfaceData, ctx: Context) -> Plan:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            domains.interface_by_mac(dom, data.mac)
            return Plan([f"detach interface {data.mac} from {dom.name()}"])

    def _transition(
        self, data: VmRef, ctx: Context, act: Callable[[libvirt.virDomain], bool], causes: tuple[str, ...]
    ) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            with self._acting(dom.name(), ctx, *causes):
                changed = act(dom)
            return {**domains.identity(dom), "state": state_name(dom.state()[0]), "changed": changed}

    def _plan_for(self, data: VmRef, step: str) -> Plan:
        """One step on an existing domain: ``step`` with ``{}`` where the domain's name goes."""
        with self._session() as conn:
            return Plan([step.format(domains.lookup(conn, data).name())])

    def _shutdown(self, dom: libvirt.virDomain, data: ShutdownData, budget: float, ctx: Context) -> dict[str, Any]:
        name = dom.name()
        ctx.raise_if_cancelled(f"cancelled before {name} was asked to shut down; it runs as before")
        ctx.progress(None, f"ACPI shutdown of {name}: waiting up to {budget:g} s for it to power off")
        with self.connection.events.watch(dom.UUIDString()) as waiter, ctx.on_cancel(waiter.wake):
            dom.shutdown()
            waiter.wait(budget)
        state = domains.state_or_gone(dom)
        if state == "shutoff":  # it powered off, even if a cancel came meanwhile: that is the answer
            return {**domains.identity(dom), "state": state, "changed": True, "forced": False}
        if ctx.cancelled:
            raise Cancelled(
                f"cancelled while waiting for {name} to power off: it was not forced off and is {state} "
                "(the guest got the ACPI request and may still act on it)",
                extra={"state": state, "name": name, "uuid": dom.UUIDString()},
            )
        if not data.force:
            raise VmShutdownFailed(
                f"{dom.name()} still {state} after {budget:g} s of ACPI shutdown",
                extra={"state": state, "name": dom.name(), "uuid": dom.UUIDString()},
            )
        ctx.progress(None, f"{name} did not power off in {budget:g} s: forcing it off")
        dom.destroy()
        return {**domains.identity(dom), "state": domains.state_or_gone(dom), "changed": True, "forced": True}

    def _checked_xml(self, conn: libvirt.virConnect, xml: str) -> ET.Element:
        root = safe_xml.parse(xml)
        self._policy(conn).check(root)
        return root

    def _generated(self, conn: libvirt.virConnect, spec: DomainSpec) -> Generated:
        if domains.exists(conn, spec.name):
            raise InvalidParameter(f"a VM named {spec.name} is already defined; send xml to change it", field="name")
        disks = [self._disk(conn, spec, i) for i in range(len(spec.disks))]
        uuid = str(uuidlib.uuid4())
        xml = domain_xml(spec, disks, spec.domain_type or domains.default_domain_type(conn), uuid)
        root = safe_xml.parse(xml)
        self._policy(conn, generated=True, approved=frozenset(d.path for d in disks)).check(root)  # the same checker
        return Generated(xml, root, uuid, [d for d in disks if d.create_gib is not None])

    def _undefinable(self, conn: libvirt.virConnect, data: UndefineData) -> tuple[libvirt.virDomain, list[OwnedVolume]]:
        """The domain, stopped, and the volumes its undefine removes."""
        dom = domains.lookup(conn, data)
        if dom.isActive():
            raise OperationNotAllowed(f"{dom.name()} is running: shut it down or destroy it first")
        return dom, self._records.of(dom.UUIDString()) if data.remove_storage else []

    def _attachable(self, conn: libvirt.virConnect, data: AttachInterfaceData, xml: str) -> libvirt.virDomain:
        dom = domains.lookup(conn, data)
        self._policy(conn).check_device(safe_xml.parse(xml), dom.name())  # the one checker, for devices too
        return dom

    def _policy(
        self, conn: libvirt.virConnect, generated: bool = False, approved: frozenset[str] = frozenset()
    ) -> policy.DomainPolicy:
        pools = Pools(conn, self._storage)
        paths = policy.PathRules(
            self._storage, pool_dirs=pools.configured_dirs(), approved=approved, emulators=domains.emulators(conn)
        )
        return policy.DomainPolicy(paths, pools.check_existing, generated)

    def _forget_stale_records(self, conn: libvirt.virConnect, uuid: str | None) -> None:
        """Records of a domain that is gone (undefined behind the worker's back) do not pass to a new one."""
        if uuid and not domains.exists_uuid(conn, uuid):
            self._records.forget(uuid)

    def _disk(self, conn: libvirt.virConnect, spec: DomainSpec, index: int) -> Disk:
        disk, field = spec.disks[index], f"disks.{index}"
        if disk.image is not None:
            return self._storage.image(disk.image, field=f"{field}.image")
        pools = Pools(conn, self._storage)
        if disk.clone_of is not None:
            return self._clone_disk(conn, spec, index)
        if disk.size_gib is None:
            return pools.existing(disk.volume or "", disk.pool, field=f"{field}.volume")
        name = disk.volume or f"{spec.name}-disk{index}.qcow2"
        return pools.planned(name, disk.pool, disk.size_gib, field=f"{field}.volume")

    def _acting(self, name: str, ctx: Context, *states: str) -> AbstractContextManager[None]:
        """The lifecycle events ``states`` of VM ``name`` while the block runs (and shortly after) carry ctx.msg_id."""
        return vm_events.acting(self._causes, name, ctx.msg_id, states)

    def _clone_disk(self, conn: libvirt.virConnect, spec: DomainSpec, index: int) -> Disk:
        """A linked clone made for the VM (a qcow2 over ``clone_of``), recorded as the VM's own volume."""
        disk, field = spec.disks[index], f"disks.{index}"
        try:  # a missing pool or source is 30006 here, as for every other disk of define
            pool = volumes.resolve_pool(conn, disk.pool or self._storage.default_pool, f"{field}.pool")
            source = volumes.clone_source(pool, self._storage, str(disk.clone_of), field=f"{field}.clone_of")
        except VolumeNotFound as exc:
            raise InvalidParameter(exc.detail, field=exc.field) from None
        name = disk.volume or f"{spec.name}-disk{index}.qcow2"
        planned = Pools(conn, self._storage).planned(
            name, pool.name(), source.capacity / GIB, f"{field}.volume", backing=(source.path, source.format)
        )
        return planned

    # Migration (kvmworker/virt/migration.py: the job, its monitor and the one-host invariant).

    def migrate(self, data: MigrateData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            # The source's own events of this migration (stopped/undefined, or resumed after a failure) carry msg_id.
            with self._acting(dom.name(), ctx, "stopped", "undefined", "suspended", "resumed"):
                return self.migrations.migrate(dom, data, ctx, self._long_calls)

    def recover_migrations(self, journal: JournalStore) -> list[dict[str, Any]]:
        """At start: each ``migrate`` a killed worker left (journalled ``interrupted``) is settled and answered.

        Its job is aborted if libvirt still runs it, the one-host invariant is enforced, and the journal's answer
        becomes the real outcome, which the redelivered message then gets (and ``SystemHandler.result``)."""
        settled = []
        for entry in list(journal.query(Query(handler="VmHandler", command="migrate", state=INTERRUPTED))):
            if (entry.reply or {}).get("code") != Code.UNKNOWN_OUTCOME or not isinstance(entry.envelope, dict):
                continue  # settled already, or nothing to go by
            try:
                reply = self._recover(MigrateData.model_validate(entry.envelope.get("data") or {}))
            except Exception:  # one that cannot be settled now (libvirt away) keeps its -1 and is tried next start
                log.exception("[%s] settling a migrate interrupted by a worker stop failed", entry.msg_id)
                continue
            journal.finish(entry.msg_id, ANSWERED, reply, 0.0)
            log.warning("[%s] migrate interrupted by a worker stop, settled: %s", entry.msg_id, reply)
            settled.append({"msg_id": entry.msg_id, **reply})
        self._recovered = settled
        return settled

    def _recover(self, data: MigrateData) -> dict[str, Any]:
        with self._session() as conn:
            try:
                dom = domains.lookup(conn, data)
            except VmNotFound:
                dom = None
            uuid = dom.UUIDString() if dom is not None else (str(data.uuid) if data.uuid else None)
            try:
                dest = self.migrations.open_destination(data.destination)
            except MigrationFailed as exc:
                return {"code": int(exc.code), "msg": exc.code.msg, "data": {**exc.data(), "reason": "interrupted"}}
            try:
                return migration.recover(dom, dest, data, uuid)
            finally:
                dest.close()

    def plan_migrate(self, data: MigrateData, ctx: Context) -> Plan:
        with self._session() as conn:
            return Plan(self.migrations.steps(domains.lookup(conn, data), data))

    # Snapshots (internal, see kvmworker/virt/snapshots.py for why) and stats.

    def snapshot_create(self, data: SnapshotCreateData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            return {**domains.identity(dom), **snapshots.create(dom, data, self.freeze_timeout)}

    def plan_snapshot_create(self, data: SnapshotCreateData, ctx: Context) -> Plan:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            if snapshots.existing(dom, data.snapshot) is not None:
                return Plan([])
            snapshots.check_creatable(dom, data)
            what = "disks and memory" if data.memory else "disks"
            frozen = " with the guest's filesystems frozen" if data.quiesce else ""
            return Plan([f"internal snapshot {data.snapshot} of {dom.name()}'s {what}{frozen}"])

    def snapshot_list(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            found = snapshots.listing(dom)
            return {**domains.identity(dom), "snapshots": found, "count": len(found)}

    def snapshot_revert(self, data: SnapshotRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            return {**domains.identity(dom), **snapshots.revert(dom, data.snapshot)}

    def plan_snapshot_revert(self, data: SnapshotRef, ctx: Context) -> Plan:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            snap = snapshots.describe(snapshots.find(dom, data.snapshot))
            return Plan([f"revert {dom.name()} to snapshot {data.snapshot} (state {snap['state']})"])

    def snapshot_delete(self, data: SnapshotDeleteData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            return {**domains.identity(dom), **snapshots.delete(dom, data.snapshot, data.children)}

    def plan_snapshot_delete(self, data: SnapshotDeleteData, ctx: Context) -> Plan:
        with self._session() as conn:
            dom = domains.lookup(conn, data)
            _, below = snapshots.deletable(dom, data.snapshot, data.children)
            return Plan([f"delete snapshot {n} of {dom.name()}" for n in [*below, data.snapshot]])

    def stats(self, data: StatsData, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            if data.names is None:
                doms = conn.listAllDomains(0)
            else:
                doms = [_named(conn, name, f"names.{i}") for i, name in enumerate(data.names)]
            vms = self.stats_reader.read(conn, doms)
        return {"vms": vms, "count": len(vms), "stale": sum(vm["stale"] for vm in vms)}

    def all_stats(self) -> list[dict[str, Any]]:
        """Every domain's figures, for /metrics (the same reading as ``stats``)."""
        with self._session() as conn:
            return self.stats_reader.read(conn, conn.listAllDomains(0))

    @contextmanager
    def _session(self) -> Iterator[libvirt.virConnect]:
        # The connection's session turns a broken connection into 30009 first; what is left is the call's fault.
        with domains.call_errors(), self.connection.session() as conn:
            yield conn


def _interface(data: AttachInterfaceData) -> tuple[InterfaceSpec, str]:
    """The NIC asked for (a MAC generated when none is given, so that the reply can name it) and its XML."""
    nic = InterfaceSpec.model_validate(data.model_dump(include=set(InterfaceSpec.model_fields)))
    nic = nic.model_copy(update={"mac": nic.mac or domains.random_mac()})
    return nic, interface_xml(nic)


def _create_step(disk: Disk) -> str:
    step = f"create {disk.create_gib:g} GiB qcow2 volume {disk.volume} in pool {disk.pool}"
    if disk.backing is not None:
        step += f" over {disk.backing[0]} (backing format {disk.backing[1]})"
    return step


def _named(conn: libvirt.virConnect, name: str, field: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(f"no VM {name}", field=field) from None
        raise


def _wait_budget(timeout: float, deadline: float | None) -> float:
    """The requested wait, cut short so that the answer still reaches a caller who stops waiting earlier."""
    if deadline is None:
        return timeout
    return max(0.0, min(timeout, deadline - time.time() - REPLY_MARGIN))


def _define_with_volumes(
    conn: libvirt.virConnect, pools: Pools, records: VolumeRecords, made: Generated
) -> dict[str, Any]:
    """Record, then create, each volume, then define; on failure all of it is undone."""
    created: list[OwnedVolume] = []
    try:
        for disk in made.new:
            planned = OwnedVolume(made.uuid, str(disk.pool), str(disk.volume), disk.path)
            records.add(planned)  # before the volume exists: a crash now leaves a record, not an orphan
            path = pools.create(disk)
            created.append(planned if path == disk.path else _moved(records, planned, path))
        dom = conn.defineXML(made.xml)
    except Exception:
        for volume in created:
            pools.delete_owned(volume)
        records.forget(made.uuid)
        raise
    return {**domains.identity(dom), "defined": True}


def _moved(records: VolumeRecords, planned: OwnedVolume, path: str) -> OwnedVolume:
    """libvirt put the volume elsewhere than planned: the record follows the volume."""
    actual = OwnedVolume(planned.domain_uuid, planned.pool, planned.volume, path)
    records.add(actual)
    records.forget(planned.domain_uuid, planned.path)
    return actual


def create_vm_handler(settings: Settings, libvirt: LibvirtConnection | None = None) -> VmHandler:
    """Constructing connects to nothing: the first command opens the connection.

    ``libvirt``: the worker's shared connection when the wiring has one (then the wiring closes it).
    """
    connection = libvirt or LibvirtConnection(settings.libvirt_uri)
    storage = StorageRules(settings.storage_dirs, settings.storage_pool)
    records = VolumeRecords(settings.state_dir / OWNERSHIP_FILE)
    migrations = Migrations(
        settings.host,
        Templates(settings.migration_uri, settings.migration_data_uri),
        settings.max_migrations,
        settings.migration_progress_timeout,
    )
    return VmHandler(connection, storage, owns_connection=libvirt is None, records=records, migrations=migrations)
