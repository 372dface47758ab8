"""Volumes of libvirt storage pools for StorageHandler: listing with who uses what, create, clone, resize, delete.

Every name goes through the VM storage rules (``check_plain_name``); a volume whose file resolves outside its pool's
directory is refused like a disk would be. A clone's backing format is always written into the clone (``-F``), taken
from libvirt's description of the source volume, or for an image from the file's own header: never left to QEMU to
probe when the guest runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.protocol.errors import InvalidParameter, OperationNotAllowed, VolumeNotFound
from kvmworker.virt.storage import GIB, StorageRules, check_plain_name, pool_path, volume_format

POOL_STATES = {
    libvirt.VIR_STORAGE_POOL_INACTIVE: "inactive",
    libvirt.VIR_STORAGE_POOL_BUILDING: "building",
    libvirt.VIR_STORAGE_POOL_RUNNING: "running",
    libvirt.VIR_STORAGE_POOL_DEGRADED: "degraded",
    libvirt.VIR_STORAGE_POOL_INACCESSIBLE: "inaccessible",
}
FILE_POOLS = {"dir", "fs", "netfs"}
QEMU_IMG_TIMEOUT = 60.0


@dataclass(frozen=True)
class Use:
    """A VM's disk on a file: the VM, the disk's target device, and whether it runs now."""

    vm: str
    target: str | None
    active: bool


@dataclass(frozen=True)
class Source:
    """What a clone is made from: a file, its format (never guessed by QEMU) and its virtual size."""

    path: str
    format: str
    capacity: int


@dataclass
class Usage:
    """Which VMs use which files, and which volumes are backed by which files (real paths)."""

    users: dict[str, list[Use]] = field(default_factory=dict)

    def of(self, path: str) -> list[Use]:
        return self.users.get(os.path.realpath(path), [])


def resolve_pool(conn: libvirt.virConnect, name: str, field: str = "pool") -> libvirt.virStoragePool:
    check_plain_name(name, field)
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        raise VolumeNotFound(f"no storage pool {name!r}", field=field) from None
    if not pool.isActive():
        raise OperationNotAllowed(f"storage pool {name} is not active", field=field)
    return pool


def find_volume(pool: libvirt.virStoragePool, name: str, field: str = "name") -> libvirt.virStorageVol | None:
    check_plain_name(name, field)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise
        return None
    check_inside(pool, vol.path(), field)
    return vol


def lookup_volume(pool: libvirt.virStoragePool, name: str, field: str = "name") -> libvirt.virStorageVol:
    vol = find_volume(pool, name, field)
    if vol is None:
        raise VolumeNotFound(f"pool {pool.name()} has no volume {name!r}", field=field)
    return vol


def check_inside(pool: libvirt.virStoragePool, path: str, field: str) -> None:
    home = os.path.realpath(pool_path(pool))
    real = os.path.realpath(path)
    if real == home or not Path(real).is_relative_to(home):
        raise InvalidParameter(f"{path} resolves outside pool {pool.name()} (after following links)", field=field)


def pool_info(pool: libvirt.virStoragePool) -> dict[str, Any]:
    root = ET.fromstring(pool.XMLDesc(0))
    state, capacity, allocation, available = pool.info()
    return {
        "name": pool.name(),
        "uuid": pool.UUIDString(),
        "type": root.get("type"),
        "path": root.findtext("target/path"),
        "state": POOL_STATES.get(state, "unknown"),
        "autostart": bool(pool.autostart()),
        "capacity": capacity,
        "allocation": allocation,
        "available": available,
    }


def backing_of(vol: libvirt.virStorageVol) -> dict[str, str] | None:
    found = ET.fromstring(vol.XMLDesc(0)).find("backingStore")
    if found is None or not found.findtext("path"):
        return None
    fmt = found.find("format")
    return {"path": found.findtext("path") or "", "format": fmt.get("type", "raw") if fmt is not None else "raw"}


def describe(vol: libvirt.virStorageVol, pool: str, usage: Usage, backed: dict[str, list[str]]) -> dict[str, Any]:
    _, capacity, allocation = vol.info()
    path = vol.path()
    return {
        "name": vol.name(),
        "pool": pool,
        "path": path,
        "format": volume_format(vol),
        "capacity": capacity,
        "allocation": allocation,
        "backing": backing_of(vol),
        "used_by": sorted({use.vm for use in usage.of(path)}),
        "clones": sorted(backed.get(os.path.realpath(path), [])),
    }


def backed_by(conn: libvirt.virConnect) -> dict[str, list[str]]:
    """real path of a backing file → the volumes (``pool/name``) over it, across every active pool."""
    found: dict[str, list[str]] = {}
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        for vol in _volumes_of(pool):
            backing = backing_of(vol)
            if backing:
                found.setdefault(os.path.realpath(backing["path"]), []).append(vol.name())
    return found


def _volumes_of(pool: libvirt.virStoragePool) -> list[libvirt.virStorageVol]:
    try:
        return pool.listAllVolumes(0)
    except libvirt.libvirtError:
        return []  # a pool that went away meanwhile has no volumes to report


def usage(conn: libvirt.virConnect) -> Usage:
    """Every disk of every domain (defined and running), by the real path of its file."""
    found = Usage()
    for dom in conn.listAllDomains(0):
        try:
            active = bool(dom.isActive())
            descriptions = [dom.XMLDesc(0)]
            if active and dom.isPersistent():
                descriptions.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError:
            continue  # undefined while we looked
        name = dom.name()
        for xml in descriptions:
            for path, target in _disk_files(conn, ET.fromstring(xml)):
                uses = found.users.setdefault(os.path.realpath(path), [])
                use = Use(name, target, active)
                if use not in uses:
                    uses.append(use)
    return found


def _disk_files(conn: libvirt.virConnect, root: ET.Element) -> list[tuple[str, str | None]]:
    files = []
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if source is None:
            continue
        path = source.get("file") or source.get("dev") or _volume_path(conn, source.get("pool"), source.get("volume"))
        if path:
            files.append((path, dev))
    return files


def _volume_path(conn: libvirt.virConnect, pool: str | None, volume: str | None) -> str | None:
    if not pool or not volume:
        return None
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
    except libvirt.libvirtError:
        return None


def volume_xml(name: str, capacity: int, fmt: str, backing: Source | None = None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing.path
        ET.SubElement(store, "format", type=backing.format)
    return ET.tostring(vol, encoding="unicode")


def clone_source(pool: libvirt.virStoragePool, rules: StorageRules, source: str, field: str = "source") -> Source:
    """A volume of ``pool`` (by name or path), else an image in a storage directory; missing → 30010."""
    if "\0" in source:
        raise InvalidParameter("a path must not contain NUL", field=field)
    vol = _pool_volume(pool, source, field)
    if vol is not None:
        return Source(vol.path(), volume_format(vol), vol.info()[1])
    if not source.startswith("/"):
        check_plain_name(source, field)
    try:
        image = rules.image(source, field=field)
    except InvalidParameter as exc:
        if exc.detail.startswith("no image"):
            raise VolumeNotFound(f"no volume {source!r} in pool {pool.name()} and {exc.detail}", field=field) from None
        raise
    return Source(image.path, image.format, virtual_size(image.path, image.format))


def _pool_volume(pool: libvirt.virStoragePool, source: str, field: str) -> libvirt.virStorageVol | None:
    if not source.startswith("/"):
        check_plain_name(source, field)
        return find_volume(pool, source, field)
    home = os.path.realpath(pool_path(pool))
    if not Path(os.path.realpath(source)).is_relative_to(home):
        return None
    check_inside(pool, source, field)
    for vol in _volumes_of(pool):
        if os.path.realpath(vol.path()) == os.path.realpath(source):
            return vol
    return None


def virtual_size(path: str, fmt: str) -> int:
    """The guest-visible size of an image, read by qemu-img with the format named (``-f``), never probed."""
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", fmt, path],
        check=False,
        capture_output=True,
        text=True,
        timeout=QEMU_IMG_TIMEOUT,
    )
    if out.returncode != 0:
        raise InvalidParameter(f"{path} is not a readable {fmt} image: {out.stderr.strip()[:500]}", field="source")
    return int(json.loads(out.stdout)["virtual-size"])


def bytes_of(size_gib: float) -> int:
    return int(size_gib * GIB)


def need_file_pool(pool: libvirt.virStoragePool, what: str) -> str:
    """The directory of a pool of files (dir, fs, netfs), existing: where a copy can be written by qemu-img."""
    kind = ET.fromstring(pool.XMLDesc(0)).get("type")
    home = pool_path(pool)
    if kind not in FILE_POOLS or not os.path.isdir(home):
        raise OperationNotAllowed(
            f"{what} needs a pool of files (dir, fs, netfs) whose directory exists; {pool.name()} is {kind} at {home}"
        )
    return home


Progress = Callable[[float | None, str | None], None]
