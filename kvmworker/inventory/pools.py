"""libvirt storage pools, through a short read-only connection of their own.

``StorageInventory`` accepts any zero-argument callable returning the pool list; this is the default one until
the VM handler's connection can be shared. Unreachable libvirt raises ``HypervisorUnavailable``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from kvmworker.protocol.errors import HypervisorUnavailable

POOL_STATES = {0: "inactive", 1: "building", 2: "running", 3: "degraded", 4: "inaccessible"}


class LibvirtPools:
    def __init__(self, uri: str):
        self._uri = uri

    def __call__(self) -> list[dict[str, Any]]:
        try:
            conn = libvirt.openReadOnly(self._uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot connect to {self._uri}: {exc.get_error_message()}") from exc
        try:
            return [pool_record(pool) for pool in conn.listAllStoragePools(0)]
        finally:
            conn.close()


def pool_record(pool: Any) -> dict[str, Any]:
    state, capacity, allocation, available = pool.info()
    active = bool(pool.isActive())
    root = ET.fromstring(pool.XMLDesc(0))
    return {
        "name": pool.name(),
        "uuid": pool.UUIDString(),
        "type": root.get("type"),
        "state": POOL_STATES.get(state, str(state)),
        "active": active,
        "autostart": bool(pool.autostart()),
        "path": root.findtext("target/path"),
        # an inactive pool's figures are stale or zero
        "capacity": capacity if active else None,
        "allocation": allocation if active else None,
        "available": available if active else None,
    }
