"""SystemHandler (extension): is the worker there, and what can it do."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import Uuid

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context
    from kvmworker.protocol.envelope import Reply


class ResultQuery(BaseModel):
    msg_id: Uuid


class SystemApi(ABC):
    name = "SystemHandler"

    @command(mutates=False, inline=True)
    @abstractmethod
    def ping(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The host, its hostname, the worker's version and uptime; answered even when every pool thread is busy."""

    @command(mutates=False)
    @abstractmethod
    def capabilities(self, data: Any, ctx: Context) -> dict[str, Any]:
        """The worker's version, the kernel, every handler with its commands, and what the host supports."""

    @command(mutates=False)
    @abstractmethod
    def status(self, data: Any, ctx: Context) -> dict[str, Any]:
        """What the operator on call asks first (``kvmworker status``): libvirt, commands running, last errors."""

    @command(ResultQuery, mutates=False, inline=True)
    @abstractmethod
    def result(self, data: ResultQuery, ctx: Context) -> Reply:
        """The reply of an earlier command as it was sent, or -1 with ``state`` running/interrupted/never_seen."""
