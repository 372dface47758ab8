"""The ``cpu`` section: model, topology, frequencies, flags, virtualisation support, usage and load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from kvmworker.inventory.files import cpu_list, key_values, read_int, read_required, read_text
from kvmworker.inventory.section import failing_as
from kvmworker.inventory.usage import CpuUsageSampler
from kvmworker.protocol.errors import CpuInfoFailed

VIRT_FLAGS = {"vmx": "intel-vt", "svm": "amd-v"}
KVM_MODULES = ("kvm_intel", "kvm_amd")


class CpuInventory:
    def __init__(
        self,
        proc: Path = Path("/proc"),
        sys: Path = Path("/sys"),
        dev_kvm: Path = Path("/dev/kvm"),
        sampler: CpuUsageSampler | None = None,
    ):
        self._proc = Path(proc)
        self._cpu_dir = Path(sys) / "devices/system/cpu"
        self._modules = Path(sys) / "module"
        self._dev_kvm = Path(dev_kvm)
        self._sampler = sampler or CpuUsageSampler(self._proc)

    def read(self) -> dict[str, Any]:
        with failing_as(CpuInfoFailed, "CPU information"):
            blocks = _cpuinfo_blocks(read_required(self._proc / "cpuinfo"))
            if not blocks:
                raise ValueError(f"{self._proc / 'cpuinfo'} lists no processor")
            first = blocks[0]
            flags = first.get("flags", first.get("Features", "")).split()
            return {
                "model": first.get("model name") or first.get("Model") or first.get("cpu model"),
                "vendor": first.get("vendor_id") or first.get("CPU implementer"),
                "architecture": platform.machine() or None,
                "logical": len(blocks),
                "online": cpu_list(read_text(self._cpu_dir / "online")),
                **self._topology(blocks),
                "mhz": self._frequencies(first),
                "flags": flags,
                "virtualization": self._virtualization(flags),
                "usage": self._sampler.read().as_dict(),
                "load_average": self._load_average(),
            }

    def summary(self) -> dict[str, Any]:
        return self._headline(self.read())

    def _headline(self, full: dict[str, Any]) -> dict[str, Any]:
        keys = ("model", "logical", "sockets", "cores")
        return {
            **{k: full[k] for k in keys},
            "usage_percent": full["usage"]["total_percent"],
            "load_average": full["load_average"],
            "kvm": full["virtualization"]["kvm_usable"],
        }

    def kvm_support(self) -> dict[str, Any]:
        """The ``kvm`` feature of ``SystemHandler.capabilities``: can this worker run KVM guests."""
        with failing_as(CpuInfoFailed, "CPU information"):
            blocks = _cpuinfo_blocks(read_required(self._proc / "cpuinfo"))
        flags = (blocks[0].get("flags") or blocks[0].get("Features") or "").split() if blocks else []
        virtualization = self._virtualization(flags)
        return {"available": virtualization["kvm_usable"], **virtualization}

    def _topology(self, blocks: list[dict[str, str]]) -> dict[str, int | None]:
        """Sockets and cores from sysfs topology, else from the cpuinfo ids; None when neither says."""
        pairs = [self._core_of(i, block) for i, block in enumerate(blocks)]
        if any(p is None for p in pairs):
            return {"sockets": None, "cores": None, "threads_per_core": None}
        cores = len(set(pairs))
        return {
            "sockets": len({socket for socket, _ in pairs}),
            "cores": cores,
            "threads_per_core": len(blocks) // cores if cores else None,
        }

    def _core_of(self, index: int, block: dict[str, str]) -> tuple[int, int] | None:
        number = block.get("processor", str(index))
        topology = self._cpu_dir / f"cpu{number}" / "topology"
        package, core = read_int(topology / "physical_package_id"), read_int(topology / "core_id")
        if package is None or core is None:
            package, core = _int_or_none(block.get("physical id")), _int_or_none(block.get("core id"))
        return None if package is None or core is None else (package, core)

    def _frequencies(self, first: dict[str, str]) -> dict[str, float | None]:
        freq = self._cpu_dir / "cpu0" / "cpufreq"
        current = read_int(freq / "scaling_cur_freq")
        mhz = first.get("cpu MHz")
        return {
            "current": round(current / 1000, 1) if current else (float(mhz) if mhz else None),
            "min": _khz_to_mhz(read_int(freq / "cpuinfo_min_freq")),
            "max": _khz_to_mhz(read_int(freq / "cpuinfo_max_freq")),
        }

    def _virtualization(self, flags: list[str]) -> dict[str, Any]:
        extension = next((VIRT_FLAGS[f] for f in VIRT_FLAGS if f in flags), None)
        return {
            "extension": extension,
            "kvm_device": self._dev_kvm.exists(),
            "kvm_usable": self._dev_kvm.exists() and os.access(self._dev_kvm, os.R_OK | os.W_OK),
            "nested": self._nested(),
            "running_as_guest": "hypervisor" in flags,
        }

    def _nested(self) -> bool | None:
        """None when no kvm vendor module is loaded (e.g. KVM built in, or this host itself a guest)."""
        for module in KVM_MODULES:
            value = read_text(self._modules / module / "parameters" / "nested")
            if value is not None:
                return value.upper() in ("Y", "1")
        return None

    def _load_average(self) -> list[float] | None:
        text = read_text(self._proc / "loadavg")
        return [float(v) for v in text.split()[:3]] if text else None


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = [key_values(block) for block in text.split("\n\n")]
    return [b for b in blocks if "processor" in b]


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _khz_to_mhz(khz: int | None) -> float | None:
    return round(khz / 1000, 1) if khz else None
