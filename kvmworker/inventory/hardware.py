"""The ``hardware`` section: DMI identity, PCI devices and NUMA nodes, all from sysfs.

A machine without DMI (many ARM boards, some VMs) has every DMI field ``None``; a sysfs that is not mounted at
all is the section's failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmworker.inventory.files import cpu_list, key_values, read_int, read_text, require_dir, subdirs
from kvmworker.inventory.pciids import PciNames
from kvmworker.inventory.section import failing_as
from kvmworker.protocol.errors import HardwareInfoFailed

DMI_FIELDS = {
    "system": {
        "vendor": "sys_vendor",
        "product": "product_name",
        "version": "product_version",
        "serial": "product_serial",
        "uuid": "product_uuid",
        "family": "product_family",
    },
    "bios": {"vendor": "bios_vendor", "version": "bios_version", "date": "bios_date"},
    "board": {"vendor": "board_vendor", "product": "board_name", "version": "board_version", "serial": "board_serial"},
    "chassis": {"vendor": "chassis_vendor", "type": "chassis_type", "serial": "chassis_serial"},
}


class HardwareInventory:
    def __init__(self, sys: Path = Path("/sys"), pci_names: PciNames | None = None):
        self._sys = Path(sys)
        self._pci_names = pci_names or PciNames()

    def read(self) -> dict[str, Any]:
        with failing_as(HardwareInfoFailed, "hardware information"):
            require_dir(self._sys / "devices", "sysfs")
            return {"dmi": self._dmi(), "pci": self._pci(), "numa": self._numa()}

    def summary(self) -> dict[str, Any]:
        return self._headline(self.read())

    def _headline(self, full: dict[str, Any]) -> dict[str, Any]:
        system = full["dmi"]["system"]
        return {
            "vendor": system["vendor"],
            "product": system["product"],
            "serial": system["serial"],
            "pci_devices": len(full["pci"]),
            "numa_nodes": len(full["numa"]),
        }

    def _dmi(self) -> dict[str, dict[str, str | None]]:
        dmi = self._sys / "class/dmi/id"
        return {
            group: {key: read_text(dmi / name) or None for key, name in files.items()}
            for group, files in DMI_FIELDS.items()
        }

    def _pci(self) -> list[dict[str, Any]]:
        return [self._pci_device(d) for d in _entries(self._sys / "bus/pci/devices")]

    def _pci_device(self, path: Path) -> dict[str, Any]:
        vendor, device = _hex(read_text(path / "vendor")), _hex(read_text(path / "device"))
        class_code = _hex(read_text(path / "class"), width=6)
        driver = path / "driver"
        return {
            "address": path.name,
            "vendor_id": vendor,
            "device_id": device,
            "subsystem_vendor_id": _hex(read_text(path / "subsystem_vendor")),
            "subsystem_device_id": _hex(read_text(path / "subsystem_device")),
            "class": class_code,
            "class_name": self._pci_names.class_name(class_code),
            "vendor_name": self._pci_names.vendor(vendor),
            "device_name": self._pci_names.device(vendor, device),
            "driver": driver.resolve().name if driver.exists() else None,
            "numa_node": _node_or_none(read_int(path / "numa_node")),
            "iommu_group": (path / "iommu_group").resolve().name if (path / "iommu_group").exists() else None,
        }

    def _numa(self) -> list[dict[str, Any]]:
        nodes = [d for d in subdirs(self._sys / "devices/system/node") if d.name[4:].isdigit()]
        return [_numa_node(d) for d in sorted(nodes, key=lambda d: int(d.name[4:]))]


def _numa_node(path: Path) -> dict[str, Any]:
    meminfo = key_values(read_text(path / "meminfo") or "")
    return {
        "node": int(path.name[4:]),
        "cpus": cpu_list(read_text(path / "cpulist")),
        "memory_total": _node_kb(meminfo, "MemTotal"),
        "memory_free": _node_kb(meminfo, "MemFree"),
    }


def _node_kb(meminfo: dict[str, str], field: str) -> int | None:
    """Node meminfo lines read ``Node 0 MemTotal:  5466316 kB``."""
    value = next((v for k, v in meminfo.items() if k.endswith(" " + field)), None)
    return int(value.split()[0]) * 1024 if value else None


def _entries(path: Path) -> list[Path]:
    """sysfs bus directories hold symlinks; a machine without that bus simply has none."""
    return sorted(path.iterdir()) if path.is_dir() else []


def _hex(text: str | None, width: int = 4) -> str | None:
    return f"{int(text, 16):0{width}x}" if text else None


def _node_or_none(node: int | None) -> int | None:
    return node if node is not None and node >= 0 else None
