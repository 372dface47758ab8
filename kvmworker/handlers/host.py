"""HostHandler: what an orchestrator needs to place VMs and an operator needs to understand a host.

Every command is read-only. Each section fails alone with its own code (40001 … 40501); ``summary`` reports a
failing section inside its answer instead of failing as a whole.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from kvmworker.dispatch.commands import command
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
from kvmworker.protocol.types import matching, string_schema
from kvmworker.settings import Settings
from kvmworker.virt.connection import LibvirtConnection

# systemd's unit name characters; the leading character may not be '-' (it would read as an option elsewhere)
_UNIT_BODY = r"[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*"
UnitName = Annotated[
    str,
    Field(max_length=255),
    matching(_UNIT_BODY, "a unit name is 1-255 of [A-Za-z0-9:_.@\\-], not starting with '-'", None),
    WithJsonSchema(string_schema(_UNIT_BODY, min_length=1, max_length=255)),
]


class ServicesData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    names: list[UnitName] | None = Field(
        default=None, max_length=64, description="Units to report besides libvirtd, virtlogd and kvmworker."
    )


class HostHandler:
    name = "HostHandler"

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

    @command(mutates=False)
    def cpu(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._cpu.read()

    @command(mutates=False)
    def memory(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._memory.read()

    @command(mutates=False)
    def storage(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._storage.read()

    @command(mutates=False)
    def network(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._network.read()

    @command(mutates=False)
    def hardware(self, data: Any, ctx: Context) -> dict[str, Any]:
        return self._hardware.read()

    @command(ServicesData, mutates=False)
    def services(self, data: ServicesData, ctx: Context) -> dict[str, Any]:
        return self._services.read(data.names)

    @command(mutates=False)
    def summary(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The headline of each section; a failing section is reported in its place, the others still answer."""
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
