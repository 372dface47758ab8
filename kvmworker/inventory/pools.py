"""libvirt storage pools, read through the worker's libvirt connection (``kvmworker.virt.connection``).

``StorageInventory`` accepts any zero-argument callable returning the pool list; this is the usual one. A libvirt
that cannot be reached raises ``HypervisorUnavailable`` (bounded in time by the connection).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from kvmworker.virt.connection import LibvirtConnection

POOL_STATES = {0: "inactive", 1: "building", 2: "running", 3: "degraded", 4: "inaccessible"}


class LibvirtPools:
    def __init__(self, connection: LibvirtConnection):
        self._connection = connection

    def __call__(self) -> list[dict[str, Any]]:
        with self._connection.session() as conn:
            return [pool_record(pool) for pool in conn.listAllStoragePools(0)]


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
