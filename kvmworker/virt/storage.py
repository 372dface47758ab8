"""Where VM disks may come from: images inside the configured directories, or volumes of a libvirt pool.

Every name and path is checked here, before libvirt sees it: a caller must not be able to attach
``/etc/shadow`` as a disk, neither directly, nor by ``..``, nor through a symlink planted in an
allowed directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.api.domain import PLAIN_NAME
from kvmworker.protocol.errors import InvalidParameter
from kvmworker.virt.ownership import OwnedVolume

QCOW2_MAGIC = b"QFI\xfb"
GIB = 1024**3


def check_plain_name(name: str, field: str) -> str:
    """A file or volume name: no '/', no '..', no NUL, not hidden, printable ASCII."""
    if "\0" in name or "/" in name or ".." in name or not PLAIN_NAME.fullmatch(name):
        raise InvalidParameter(
            f"{name!r} is not a plain name: use [A-Za-z0-9_.+-], no '/', no '..', not starting with '.' or '-'",
            field=field,
        )
    return name


@dataclass(frozen=True)
class Disk:
    """A disk resolved to a path libvirt may use, and whether this worker must create it first."""

    path: str
    format: str
    create_gib: float | None = None
    pool: str | None = None
    volume: str | None = None
    backing: tuple[str, str] | None = None
    """A linked clone: the (path, format) of the file it is made over."""


class StorageRules:
    """The allowed image directories (``--storage-dirs``) and the default pool for new volumes."""

    def __init__(self, dirs: Iterable[Path], default_pool: str):
        self.dirs = [Path(os.path.realpath(d)) for d in dirs]
        self.default_pool = default_pool

    def image(self, name_or_path: str, field: str = "image") -> Disk:
        """An existing image: a plain name looked up in the directories, or an absolute path inside one."""
        if "\0" in name_or_path:
            raise InvalidParameter("a path must not contain NUL", field=field)
        candidates = [Path(name_or_path)] if name_or_path.startswith("/") else self._named(name_or_path, field)
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))
            if not self._inside(real):
                raise InvalidParameter(
                    f"{name_or_path} is outside the storage directories (after following links)", field=field
                )
            if real.is_file():
                return Disk(str(real), image_format(real))
        raise InvalidParameter(f"no image {name_or_path!r} in {', '.join(map(str, self.dirs))}", field=field)

    def _named(self, name: str, field: str) -> list[Path]:
        check_plain_name(name, field)
        return [d / name for d in self.dirs]

    def _inside(self, real: Path) -> bool:
        return any(real.is_relative_to(d) for d in self.dirs)


class Pools:
    """Volumes of libvirt storage pools, through the worker's connection."""

    def __init__(self, conn: libvirt.virConnect, rules: StorageRules):
        self._conn = conn
        self._rules = rules

    def existing(self, volume: str, pool: str | None, field: str) -> Disk:
        pool_name = pool or self._rules.default_pool
        check_plain_name(volume, field)
        target = self._pool(pool_name, field)
        try:
            vol = target.storageVolLookupByName(volume)
        except libvirt.libvirtError:
            raise InvalidParameter(f"pool {pool_name} has no volume {volume!r}", field=field) from None
        path = vol.path()
        if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(pool_path(target))):
            raise InvalidParameter(f"volume {volume} links outside pool {pool_name}", field=field)
        return Disk(path, volume_format(vol), pool=pool_name, volume=volume)

    def check_existing(self, pool: str, volume: str, field: str) -> None:
        """For ``<disk type='volume'>`` in raw XML: the same rule as an existing volume of the spec."""
        self.existing(volume, pool, field)

    def planned(
        self, volume: str, pool: str | None, size_gib: float, field: str, backing: tuple[str, str] | None = None
    ) -> Disk:
        """A new qcow2 volume (over ``backing``'s path and format when given), not created yet (so that a dry run
        can show it)."""
        pool_name = pool or self._rules.default_pool
        check_plain_name(volume, field)
        target = self._pool(pool_name, field)
        if volume in target.listVolumes():
            raise InvalidParameter(f"pool {pool_name} already has a volume {volume!r}", field=field)
        path = str(Path(pool_path(target)) / volume)
        return Disk(path, "qcow2", create_gib=size_gib, pool=pool_name, volume=volume, backing=backing)

    def create(self, disk: Disk) -> str:
        target = self._conn.storagePoolLookupByName(disk.pool)
        vol = target.createXML(volume_xml(disk.volume, disk.create_gib, disk.backing), 0)
        return vol.path()

    def configured_dirs(self) -> list[str]:
        """The directory of the configured pool, where raw XML may put file disks too; none when it has none."""
        try:
            pool = self._conn.storagePoolLookupByName(self._rules.default_pool)
            return [pool_path(pool)] if pool.isActive() else []
        except libvirt.libvirtError:
            return []

    def delete_owned(self, owned: OwnedVolume) -> bool:
        """Deletes a volume the worker's records say it made, only if it is still that volume inside that pool."""
        try:
            pool = self._conn.storagePoolLookupByName(owned.pool)
            vol = pool.storageVolLookupByName(owned.volume)
            real, home = Path(os.path.realpath(vol.path())), Path(os.path.realpath(pool_path(pool)))
            if vol.path() != owned.path or real == home or not real.is_relative_to(home):
                return False
            vol.delete(0)
        except libvirt.libvirtError:
            return False
        return True

    def _pool(self, name: str, field: str) -> libvirt.virStoragePool:
        check_plain_name(name, "pool")
        try:
            pool = self._conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            raise InvalidParameter(f"no storage pool {name!r}", field=field) from None
        if not pool.isActive():
            raise InvalidParameter(f"storage pool {name} is not active", field=field)
        return pool


def volume_xml(name: str, size_gib: float, backing: tuple[str, str] | None = None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(size_gib * GIB))
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="qcow2")
    if backing is not None:  # the backing format is written into the clone, never left to QEMU to probe
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(vol, encoding="unicode")


def pool_path(pool: libvirt.virStoragePool) -> str:
    return ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or "/"


def volume_format(vol: libvirt.virStorageVol) -> str:
    found = ET.fromstring(vol.XMLDesc(0)).find("target/format")
    return found.get("type", "raw") if found is not None else "raw"


def image_format(path: Path) -> str:
    """qcow2 when the file says so, raw otherwise: the format is never taken from the caller's word."""
    with open(path, "rb") as image:
        return "qcow2" if image.read(4) == QCOW2_MAGIC else "raw"
