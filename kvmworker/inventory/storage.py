"""The ``storage`` section: block devices with I/O counters, mounted filesystems with usage, libvirt pools."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from kvmworker.inventory.files import read_int, read_required, read_text, require_dir, subdirs
from kvmworker.inventory.section import failing_as
from kvmworker.protocol.errors import HypervisorUnavailable, StorageInfoFailed

SECTOR = 512  # /sys/block sizes and /proc/diskstats count 512-byte sectors whatever the device's own sector size
PoolLister = Callable[[], list[dict[str, Any]]]
# Pseudo filesystems that /proc/filesystems does not mark "nodev" but which hold no data of the host.
SKIPPED_FSTYPES = {"squashfs", "iso9660"}
_OCTAL = re.compile(r"\\([0-7]{3})")


class StorageInventory:
    def __init__(self, proc: Path = Path("/proc"), sys: Path = Path("/sys"), pools: PoolLister | None = None):
        self._proc = Path(proc)
        self._block = Path(sys) / "block"
        self._pools = pools

    def read(self, with_pools: bool = True) -> dict[str, Any]:
        with failing_as(StorageInfoFailed, "storage information"):
            io = _diskstats(read_text(self._proc / "diskstats"))
            devices = [self._device(d, io) for d in subdirs(require_dir(self._block, "sysfs block directory"))]
            return {
                "block_devices": [d for d in devices if d["size"] or not _is_virtual(d["name"])],
                "filesystems": self._filesystems(),
                "libvirt_pools": self._libvirt_pools() if with_pools else None,
            }

    def summary(self) -> dict[str, Any]:
        """Without the libvirt pools: a slow libvirtd must not slow the summary."""
        full = self.read(with_pools=False)
        disks = [d for d in full["block_devices"] if not _is_virtual(d["name"])]
        root = next((fs for fs in full["filesystems"] if fs["mountpoint"] == "/"), None)
        return {
            "disks": len(disks),
            "disk_bytes": sum(d["size"] or 0 for d in disks),
            "root": {k: root[k] for k in ("device", "fstype", "total", "free", "used_percent")} if root else None,
        }

    def _device(self, path: Path, io: dict[str, dict[str, int]]) -> dict[str, Any]:
        device = path / "device"
        return {
            "name": path.name,
            "size": _sectors(read_int(path / "size")),
            "rotational": _flag(read_int(path / "queue" / "rotational")),
            "removable": _flag(read_int(path / "removable")),
            "read_only": _flag(read_int(path / "ro")),
            "model": read_text(device / "model") or None,
            "vendor": read_text(device / "vendor") or None,
            "serial": read_text(device / "serial") or read_text(path / "serial") or None,
            "partitions": [_partition(p) for p in subdirs(path) if (p / "partition").exists()],
            "io": io.get(path.name),
        }

    def _filesystems(self) -> list[dict[str, Any]]:
        nodev = _nodev_types(read_text(self._proc / "filesystems"))
        mounts = _mounts(read_required(self._proc / "self" / "mounts"))
        real = [m for m in mounts if m["mountpoint"] == "/" or _device_backed(m["fstype"], nodev)]
        return [{**m, **_usage(m["mountpoint"])} for m in real]

    def _libvirt_pools(self) -> dict[str, Any]:
        """Unreachable libvirt is part of the answer, not a failure of the section."""
        if self._pools is None:
            return {"reachable": False, "reason": "no libvirt connection configured", "pools": None}
        try:
            return {"reachable": True, "reason": None, "pools": self._pools()}
        except (HypervisorUnavailable, libvirt.libvirtError) as exc:
            return {"reachable": False, "reason": str(exc), "pools": None}


def _device_backed(fstype: str, nodev: set[str]) -> bool:
    """``fuse.sshfs`` is a ``fuse`` mount: nodev, and a statvfs on a dead one would hang the command."""
    base = fstype.split(".", 1)[0]
    return base not in nodev and fstype not in SKIPPED_FSTYPES


def _partition(path: Path) -> dict[str, Any]:
    return {"name": path.name, "size": _sectors(read_int(path / "size")), "start": _sectors(read_int(path / "start"))}


def _sectors(count: int | None) -> int | None:
    return None if count is None else count * SECTOR


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _is_virtual(name: str) -> bool:
    return name.startswith(("loop", "ram", "zram", "nbd"))


def _diskstats(text: str | None) -> dict[str, dict[str, int]]:
    stats = {}
    for line in (text or "").splitlines():
        f = line.split()
        if len(f) < 14:
            continue
        stats[f[2]] = {
            "read_count": int(f[3]),
            "read_bytes": int(f[5]) * SECTOR,
            "read_time_ms": int(f[6]),
            "write_count": int(f[7]),
            "write_bytes": int(f[9]) * SECTOR,
            "write_time_ms": int(f[10]),
            "busy_time_ms": int(f[12]),
        }
    return stats


def _nodev_types(text: str | None) -> set[str]:
    return {line.split()[1] for line in (text or "").splitlines() if line.startswith("nodev")}


def _mounts(text: str) -> list[dict[str, Any]]:
    entries = (line.split() for line in text.splitlines())
    return [
        {"device": _unescape(f[0]), "mountpoint": _unescape(f[1]), "fstype": f[2], "read_only": "ro" in f[3].split(",")}
        for f in entries
        if len(f) >= 4
    ]


def _unescape(field: str) -> str:
    """/proc/*/mounts writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _usage(mountpoint: str) -> dict[str, Any]:
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return {"total": None, "used": None, "free": None, "used_percent": None}
    total, free, avail = st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize
    used = total - free
    # as df: the share of what non-root users can use
    percent = round(100.0 * used / (used + avail), 1) if used + avail else None
    return {"total": total, "used": used, "free": avail, "used_percent": percent}
