"""The ``memory`` section: RAM and swap from ``/proc/meminfo``, huge pages and KSM from ``/sys/kernel/mm``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kvmworker.inventory.files import key_values, read_int, read_required, subdirs
from kvmworker.inventory.section import failing_as
from kvmworker.protocol.errors import MemoryInfoFailed

KSM_FIELDS = ("run", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans")
_HUGEPAGE_DIR = re.compile(r"hugepages-(\d+)kB")


class MemoryInventory:
    def __init__(self, proc: Path = Path("/proc"), sys: Path = Path("/sys")):
        self._meminfo = Path(proc) / "meminfo"
        self._mm = Path(sys) / "kernel/mm"

    def read(self) -> dict[str, Any]:
        with failing_as(MemoryInfoFailed, "memory information"):
            info = _meminfo_bytes(read_required(self._meminfo))
            if "MemTotal" not in info:
                raise KeyError(f"MemTotal missing from {self._meminfo}")
            return {
                "ram": _ram(info),
                "swap": _swap(info),
                "hugepages": self._hugepages(info),
                "ksm": self._ksm(),
            }

    def summary(self) -> dict[str, Any]:
        return self._headline(self.read())

    def _headline(self, full: dict[str, Any]) -> dict[str, Any]:
        ram = full["ram"]
        return {
            "total": ram["total"],
            "available": ram["available"],
            "used_percent": ram["used_percent"],
            "swap_total": full["swap"]["total"],
        }

    def _hugepages(self, info: dict[str, int]) -> dict[str, Any]:
        sizes = [self._hugepage_size(d) for d in subdirs(self._mm / "hugepages") if _HUGEPAGE_DIR.fullmatch(d.name)]
        return {"default_size": info.get("Hugepagesize"), "sizes": sorted(sizes, key=lambda s: s["size"])}

    def _hugepage_size(self, directory: Path) -> dict[str, Any]:
        size_kb = int(_HUGEPAGE_DIR.fullmatch(directory.name).group(1))
        return {
            "size": size_kb * 1024,
            "total": read_int(directory / "nr_hugepages"),
            "free": read_int(directory / "free_hugepages"),
            "reserved": read_int(directory / "resv_hugepages"),
            "surplus": read_int(directory / "surplus_hugepages"),
        }

    def _ksm(self) -> dict[str, Any] | None:
        """None when the kernel has no KSM; ``run`` 1 means merging is on."""
        ksm = self._mm / "ksm"
        if not ksm.is_dir():
            return None
        return {field: read_int(ksm / field) for field in KSM_FIELDS}


def _meminfo_bytes(text: str) -> dict[str, int]:
    """Values in bytes; the ``HugePages_*`` counts stay counts."""
    values: dict[str, int] = {}
    for key, raw in key_values(text).items():
        number, _, unit = raw.partition(" ")
        values[key] = int(number) * (1024 if unit.strip() == "kB" else 1)
    return values


def _ram(info: dict[str, int]) -> dict[str, Any]:
    total, free = info["MemTotal"], info.get("MemFree")
    buffers, cached = info.get("Buffers"), _cached(info)
    available = info.get("MemAvailable")
    # as `free` counts it: what is neither free nor reclaimable cache
    used = total - free - (buffers or 0) - (cached or 0) if free is not None else None
    used = used if used is None or used >= 0 else total - free
    return {
        "total": total,
        "available": available,
        "used": used,
        "free": free,
        "buffers": buffers,
        "cached": cached,
        "shared": info.get("Shmem"),
        "used_percent": round(100.0 * (total - available) / total, 1) if available is not None and total else None,
    }


def _cached(info: dict[str, int]) -> int | None:
    if "Cached" not in info:
        return None
    return info["Cached"] + info.get("SReclaimable", 0)


def _swap(info: dict[str, int]) -> dict[str, Any]:
    total, free = info.get("SwapTotal"), info.get("SwapFree")
    used = total - free if total is not None and free is not None else None
    return {"total": total, "free": free, "used": used}
