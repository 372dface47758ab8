"""Names for PCI ids from the ``pci.ids`` database, when the host has the file (Debian: package ``pci.ids``)."""

from __future__ import annotations

import threading
from pathlib import Path

PCI_IDS_PATHS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"), Path("/usr/share/pci.ids"))


class PciNames:
    """Parsed once, on first use (the file is ~1.3 MB); every lookup of an absent name or file is ``None``."""

    def __init__(self, paths: tuple[Path, ...] = PCI_IDS_PATHS):
        self._paths = paths
        self._lock = threading.Lock()
        self._loaded = False
        self._vendors: dict[str, str] = {}
        self._devices: dict[tuple[str, str], str] = {}
        self._classes: dict[str, str] = {}

    def vendor(self, vendor: str | None) -> str | None:
        self._load()
        return self._vendors.get(vendor or "")

    def device(self, vendor: str | None, device: str | None) -> str | None:
        self._load()
        return self._devices.get((vendor or "", device or ""))

    def class_name(self, class_code: str | None) -> str | None:
        """The most specific name: programming interface, else subclass."""
        self._load()
        code = class_code or ""
        return self._classes.get(code) or self._classes.get(code[:4]) or self._classes.get(code[:2])

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            path = next((p for p in self._paths if p.is_file()), None)
            if path is not None:
                self._parse(path.read_text(errors="replace"))

    def _parse(self, text: str) -> None:
        vendor = klass = subclass = None  # the enclosing entries of the indented line being read
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            depth = len(line) - len(line.lstrip("\t"))
            key, _, name = line.strip().partition("  ")
            key, name = key.lower(), name.strip()
            if line.startswith("C "):
                vendor, klass = None, key[2:].strip()
                self._classes[klass] = name
            elif depth == 0:
                vendor, klass = key, None
                self._vendors[vendor] = name
            elif depth == 1 and vendor:
                self._devices[(vendor, key)] = name
            elif depth == 1 and klass:
                subclass = klass + key
                self._classes[subclass] = name
            elif depth == 2 and klass and subclass:
                self._classes[subclass + key] = name
