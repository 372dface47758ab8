"""HostHandler: what an orchestrator needs to place VMs and an operator needs to understand a host.

Every command is read-only. Each section fails alone with its own code (40001 … 40501); ``summary`` reports a
failing section inside its answer instead of failing as a whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import matching, string_schema

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

# systemd's unit name characters; the leading character may not be '-' (it would read as an option elsewhere)
_UNIT_BODY = r"[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*"
UnitName = Annotated[
    str,
    Field(max_length=255),
    matching(_UNIT_BODY, "a unit name is 1-255 of [A-Za-z0-9:_.@\\-], not starting with '-'", None),
    WithJsonSchema(string_schema(_UNIT_BODY, min_length=1, max_length=255)),
]


class ServicesData(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    names: list[UnitName] | None = Field(
        default=None, max_length=64, description="Units to report besides libvirtd, virtlogd and kvmworker."
    )


class HostApi(ABC):
    name = "HostHandler"

    @command(mutates=False)
    @abstractmethod
    def cpu(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The CPU section (40001 when it cannot be read)."""

    @command(mutates=False)
    @abstractmethod
    def memory(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The memory section (40101)."""

    @command(mutates=False)
    @abstractmethod
    def storage(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The storage section, libvirt's storage pools included (40201)."""

    @command(mutates=False)
    @abstractmethod
    def network(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The network section: interfaces, and which of them the worker manages (40301)."""

    @command(mutates=False)
    @abstractmethod
    def hardware(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The hardware section (40401)."""

    @command(ServicesData, mutates=False)
    @abstractmethod
    def services(self, data: ServicesData, ctx: Context) -> dict[str, Any]:
        """libvirtd, virtlogd, kvmworker and the units named, as systemd sees them (40501)."""

    @command(mutates=False)
    @abstractmethod
    def summary(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The headline of each section; a failing section is reported in its place, the others still answer."""
