"""StorageHandler: libvirt storage pools and volumes through the worker's one libvirt connection (INTERFACE §3)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from kvmworker.api.storage import PoolRef, StorageApi, VolumeClone, VolumeCreate, VolumeRef, VolumeResize
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.protocol.errors import InvalidParameter, OperationNotAllowed
from kvmworker.settings import Settings
from kvmworker.virt import domains, volumes
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.copy import CopyControl, full_copy
from kvmworker.virt.storage import StorageRules, pool_path, volume_format


class StorageHandler(StorageApi):
    def __init__(self, connection: LibvirtConnection, storage: StorageRules):
        self.connection = connection
        self._storage = storage

    def pools(self, data: Any, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            found = [volumes.pool_info(pool) for pool in conn.listAllStoragePools(0)]
        return {"pools": sorted(found, key=lambda p: p["name"]), "count": len(found)}

    def volumes(self, data: PoolRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            pool = self._pool(conn, data.pool)
            pool.refresh(0)
            usage, backed = volumes.usage(conn), volumes.backed_by(conn)
            found = [volumes.describe(vol, pool.name(), usage, backed) for vol in pool.listAllVolumes(0)]
        return {"volumes": sorted(found, key=lambda v: v["name"]), "count": len(found)}

    def volume_create(self, data: VolumeCreate, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            pool, existing = self._creatable(conn, data)
            if existing is not None:
                return {**self._described(conn, pool, existing), "changed": False}
            xml = volumes.volume_xml(data.name, volumes.bytes_of(data.size_gib), data.format)
            vol = pool.createXML(xml, 0)
            return {**self._described(conn, pool, vol), "changed": True}

    def plan_volume_create(self, data: VolumeCreate, ctx: Context) -> Plan:
        with self._session() as conn:
            pool, existing = self._creatable(conn, data)
            if existing is not None:
                return Plan([])
            return Plan([f"create {data.size_gib:g} GiB {data.format} volume {data.name} in pool {pool.name()}"])

    def volume_clone(self, data: VolumeClone, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            pool, source, capacity, existing = self._clonable(conn, data)
            if existing is not None:
                return {**self._described(conn, pool, existing), "changed": False}
            if data.linked:
                xml = volumes.volume_xml(data.name, capacity, "qcow2", backing=source)
                vol = pool.createXML(xml, 0)
            else:
                home = volumes.need_file_pool(pool, "a full copy")
                grow = capacity if capacity > source.capacity else None
                full_copy(source.path, source.format, f"{home}/{data.name}", CopyControl.of(ctx), grow)
                pool.refresh(0)
                vol = volumes.lookup_volume(pool, data.name)
            return {**self._described(conn, pool, vol), "changed": True}

    def plan_volume_clone(self, data: VolumeClone, ctx: Context) -> Plan:
        with self._session() as conn:
            pool, source, capacity, existing = self._clonable(conn, data)
            if existing is not None:
                return Plan([])
            if data.linked:
                how = f"linked clone: qcow2 over {source.path} (backing format {source.format})"
            else:
                volumes.need_file_pool(pool, "a full copy")
                how = f"full copy of {source.path} ({source.format})"
            return Plan([f"create volume {data.name} in pool {pool.name()}, {capacity} bytes, as a {how}"])

    def volume_resize(self, data: VolumeResize, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            pool, vol, size, running = self._resizable(conn, data)
            before = vol.info()[1]
            if size == before:
                return {**self._described(conn, pool, vol), "changed": False, "live": False}
            if running:
                use = running[0]
                dom = conn.lookupByName(use.vm)
                dom.blockResize(use.target or vol.path(), size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                vol.resize(size, 0)
            return {**self._described(conn, pool, vol), "changed": True, "live": bool(running)}

    def plan_volume_resize(self, data: VolumeResize, ctx: Context) -> Plan:
        with self._session() as conn:
            pool, vol, size, running = self._resizable(conn, data)
            if size == vol.info()[1]:
                return Plan([])
            through = f" live, through running VM {running[0].vm} ({running[0].target})" if running else ""
            return Plan([f"grow volume {vol.name()} in pool {pool.name()} to {size} bytes{through}"])

    def volume_delete(self, data: VolumeRef, ctx: Context) -> dict[str, Any]:
        with self._session() as conn:
            pool, vol = self._deletable(conn, data)
            path = vol.path()
            vol.delete(0)
            return {"name": data.name, "pool": pool.name(), "path": path, "deleted": True}

    def plan_volume_delete(self, data: VolumeRef, ctx: Context) -> Plan:
        with self._session() as conn:
            pool, vol = self._deletable(conn, data)
            return Plan([f"delete volume {vol.name()} ({vol.path()}) from pool {pool.name()}"])

    def _pool(self, conn: libvirt.virConnect, name: str | None) -> libvirt.virStoragePool:
        return volumes.resolve_pool(conn, name or self._storage.default_pool)

    def _described(self, conn: libvirt.virConnect, pool: libvirt.virStoragePool, vol: Any) -> dict[str, Any]:
        return volumes.describe(vol, pool.name(), volumes.usage(conn), volumes.backed_by(conn))

    def _creatable(self, conn: libvirt.virConnect, data: VolumeCreate) -> tuple[libvirt.virStoragePool, Any]:
        """The pool, and the existing volume when it is the one asked for (a different one is 30006)."""
        pool = self._pool(conn, data.pool)
        pool.refresh(0)  # a file put there behind libvirt's back is a volume too: never overwritten
        existing = volumes.find_volume(pool, data.name)
        if existing is None:
            return pool, None
        size, fmt = existing.info()[1], volume_format(existing)
        if fmt != data.format or size != volumes.bytes_of(data.size_gib) or volumes.backing_of(existing):
            raise InvalidParameter(
                f"pool {pool.name()} already has a different volume {data.name} ({fmt}, {size} bytes)", field="name"
            )
        return pool, existing

    def _clonable(
        self, conn: libvirt.virConnect, data: VolumeClone
    ) -> tuple[libvirt.virStoragePool, volumes.Source, int, Any]:
        """The pool, the source, the clone's size, and the existing clone when it is the one asked for."""
        pool = self._pool(conn, data.pool)
        pool.refresh(0)  # a file put there behind libvirt's back is a volume too: never overwritten
        source = volumes.clone_source(pool, self._storage, data.source)
        if os_real(source.path) == os_real(f"{pool_path(pool)}/{data.name}"):
            raise InvalidParameter("a volume cannot be cloned onto itself", field="name")
        wanted = volumes.bytes_of(data.size_gib) if data.size_gib is not None else source.capacity
        if wanted < source.capacity:
            raise InvalidParameter(f"size_gib is below the source's {source.capacity} bytes", field="size_gib")
        existing = volumes.find_volume(pool, data.name)
        if existing is not None and not _same_clone(existing, source, wanted, data.linked):
            raise InvalidParameter(f"pool {pool.name()} already has a different volume {data.name}", field="name")
        return pool, source, wanted, existing

    def _resizable(
        self, conn: libvirt.virConnect, data: VolumeResize
    ) -> tuple[libvirt.virStoragePool, Any, int, list[volumes.Use]]:
        pool = self._pool(conn, data.pool)
        vol = volumes.lookup_volume(pool, data.name)
        size, before = volumes.bytes_of(data.size_gib), vol.info()[1]
        if size < before:
            raise InvalidParameter(f"{data.name} is {before} bytes: volumes only grow", field="size_gib")
        running = [use for use in volumes.usage(conn).of(vol.path()) if use.active]
        if len({use.vm for use in running}) > 1:
            raise OperationNotAllowed(f"{data.name} is used by several running VMs; it cannot grow under them")
        return pool, vol, size, running

    def _deletable(self, conn: libvirt.virConnect, data: VolumeRef) -> tuple[libvirt.virStoragePool, Any]:
        pool = self._pool(conn, data.pool)
        vol = volumes.lookup_volume(pool, data.name)
        users = sorted({use.vm for use in volumes.usage(conn).of(vol.path())})
        if users:
            raise OperationNotAllowed(f"{data.name} is used by VM {', '.join(users)}", extra={"used_by": users})
        clones = sorted(volumes.backed_by(conn).get(os_real(vol.path()), []))
        if clones:
            raise OperationNotAllowed(f"{data.name} backs {', '.join(clones)}", extra={"clones": clones})
        return pool, vol

    @contextmanager
    def _session(self) -> Iterator[libvirt.virConnect]:
        with domains.call_errors(), self.connection.session() as conn:
            yield conn


def os_real(path: str) -> str:
    return os.path.realpath(path)


def _same_clone(vol: Any, source: volumes.Source, capacity: int, linked: bool) -> bool:
    backing = volumes.backing_of(vol)
    if linked:
        return backing is not None and os_real(backing["path"]) == os_real(source.path) and vol.info()[1] == capacity
    return backing is None and volume_format(vol) == source.format and vol.info()[1] == capacity


def create_storage_handler(settings: Settings, libvirt: LibvirtConnection) -> StorageHandler:
    """Borrows the VM handler's connection (one libvirt connection per worker)."""
    return StorageHandler(libvirt, StorageRules(settings.storage_dirs, settings.storage_pool))
