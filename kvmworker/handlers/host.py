"""HostHandler: the host's inventory, one reader per section (``kvmworker.inventory``)."""

from __future__ import annotations

from typing import Any

from kvmworker.api.host import HostApi, ServicesData
from kvmworker.dispatch.context import Context
from kvmworker.inventory.cpu import CpuInventory
from kvmworker.inventory.hardware import HardwareInventory
from kvmworker.inventory.identity import HostIdentity
from kvmworker.inventory.memory import MemoryInventory
from kvmworker.inventory.network import NetworkInventory
from kvmworker.inventory.pools import LibvirtPools
from kvmworker.inventory.services import ServiceInventory
from kvmworker.inventory.storage import StorageInventory
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.protocol.errors import KvmError
from kvmworker.settings import Settings
from kvmworker.virt.connection import LibvirtConnection


class HostHandler(HostApi):
    def __init__(
        self,
        cpu: CpuInventory,
        memory: MemoryInventory,
        storage: StorageInventory,
        network: NetworkInventory,
        hardware: HardwareInventory,
        services: ServiceInventory,
        identity: HostIdentity,
        owned: tuple[Any, ...] = (),
    ):
        self._cpu, self._memory, self._storage = cpu, memory, storage
        self._network, self._hardware, self._services = network, hardware, services
        self._identity = identity
        self._owned = owned  # clients this handler opened for itself, closed with it

    def close(self) -> None:
        for client in self._owned:
            client.close()

    def cpu(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._cpu.read()

    def memory(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._memory.read()

    def storage(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._storage.read()

    def network(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._network.read()

    def hardware(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._hardware.read()

    def services(self, data: ServicesData, ctx: Context) -> dict[str, Any]:
        return self._services.read(data.names)

    def summary(self, data: Any, ctx: Context) -> dict[str, Any]:
        sections = {
            "cpu": self._cpu,
            "memory": self._memory,
            "storage": self._storage,
            "network": self._network,
            "hardware": self._hardware,
            "services": self._services,
        }
        return {**self._identity.read(), **{name: _headline(section) for name, section in sections.items()}}


def _headline(section: Any) -> dict[str, Any]:
    try:
        return section.summary()
    except KvmError as exc:
        return {"error": {"code": int(exc.code), "msg": exc.code.msg, "detail": exc.detail}}


def create_host_handler(
    settings: Settings,
    libvirt: LibvirtConnection | None = None,
    netlink: NetlinkPool | None = None,
) -> HostHandler:
    """``libvirt``, ``netlink``: the worker's shared clients when the wiring has them; otherwise the handler opens
    its own on first use and closes them with itself."""
    connection = libvirt or LibvirtConnection(settings.libvirt_uri)
    links = netlink or NetlinkPool(settings.netns)
    owned = (() if libvirt else (connection,)) + (() if netlink else (links,))
    return HostHandler(
        cpu=CpuInventory(),
        memory=MemoryInventory(),
        storage=StorageInventory(pools=LibvirtPools(connection)),
        network=NetworkInventory(netns=settings.netns, links=links),
        hardware=HardwareInventory(),
        services=ServiceInventory(),
        identity=HostIdentity(),
        owned=owned,
    )
