"""NamespaceHandler: named network namespaces (``/run/netns``), as ``ip netns`` keeps them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from kvmworker.api.resources import netlink_key
from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import NamespaceName

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context


class NamespaceRef(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: NamespaceName


def namespace_key(data: NamespaceRef) -> str:
    return netlink_key(data.name)


class NamespaceApi(ABC):
    name = "NamespaceHandler"

    @command(NamespaceRef, resource=namespace_key)
    @abstractmethod
    def create(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        """A new namespace, remembered as the worker's; one it made before is answered ``created: false``."""

    @command(NamespaceRef, resource=namespace_key)
    @abstractmethod
    def delete(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        """Delete a namespace this worker made (never its own, never anyone else's)."""

    @command(mutates=False)
    @abstractmethod
    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        """Every named namespace, and whether the worker made it."""

    @command(NamespaceRef, mutates=False)
    @abstractmethod
    def show(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        """One namespace's devices and addresses."""
