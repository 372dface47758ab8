"""Who this host is, for ``summary``: hostname, OS release, kernel and uptime."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from kvmworker.inventory.files import key_values, read_text

OS_RELEASE_PATHS = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


class HostIdentity:
    def __init__(self, proc: Path = Path("/proc"), os_release: tuple[Path, ...] = OS_RELEASE_PATHS):
        self._proc = Path(proc)
        self._os_release = os_release

    def read(self) -> dict[str, Any]:
        """Never fails: what cannot be read is ``None``."""
        uptime = read_text(self._proc / "uptime")
        return {
            "hostname": socket.gethostname(),
            "os": self._release(),
            "kernel": read_text(self._proc / "sys/kernel/osrelease"),
            "uptime_s": round(float(uptime.split()[0]), 1) if uptime else None,
        }

    def _release(self) -> dict[str, str | None]:
        text = next((t for t in map(read_text, self._os_release) if t is not None), "")
        fields = {k: v.strip('"') for k, v in key_values(text, sep="=").items()}
        return {"name": fields.get("PRETTY_NAME"), "id": fields.get("ID"), "version_id": fields.get("VERSION_ID")}
