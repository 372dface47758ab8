"""What the three network handlers share: the namespaces' sockets, the store and the interface policy."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmworker.netplane.changes import Changes
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.netplane.store import FILENAME, NetworkStore
from kvmworker.protocol.errors import KvmError
from kvmworker.settings import Settings


@dataclass
class Netplane:
    pool: NetlinkPool
    store: NetworkStore
    physical: PhysicalInterfaces
    changes: Changes = field(default_factory=Changes)
    """What commands are changing now: their causes, and when the network watch may judge a network."""
    closing: list[Callable[[], None]] = field(default_factory=list)
    """Run first by ``close()``, once (the network watch stops there, before the sockets it reads close)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Netplane:
        return cls(
            NetlinkPool(settings.netns),
            NetworkStore(settings.state_dir / FILENAME),
            PhysicalInterfaces(settings.physical_interfaces),
        )

    def vlan_support(self) -> dict[str, Any]:
        """Does the kernel know the vlan link kind (8021q)? Asked without creating anything: a vlan
        request without a parent is refused with EINVAL by a kernel that knows the kind, and with
        EOPNOTSUPP by one that does not."""
        probe = f"kvmprobe{os.getpid() % 100000}"
        try:
            self.pool.get().add_link(probe, "vlan")
        except KvmError as exc:
            code = getattr(exc.__cause__, "code", None)
            if code == errno.EOPNOTSUPP:
                return {"available": False, "reason": "the kernel has no 8021q support (vlan link type unknown)"}
            if code == errno.EINVAL:
                return {"available": True}
            raise
        self.pool.get().delete_link(probe)  # a kernel that made it anyway: tidy up
        return {"available": True}

    def close(self) -> None:
        closing, self.closing = self.closing, []
        for action in closing:
            action()
        self.pool.close()
        self.store.close()
