"""SystemHandler (extension): is the worker there, and what can it do."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from kvmworker.api.operations import CancelQuery, OperationsQuery
from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import Uuid

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context
    from kvmworker.protocol.envelope import Reply


class ResultQuery(BaseModel):
    model_config = ConfigDict(defer_build=True)
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
        """The reply of an earlier command as it was sent, or -1 with ``state`` queued/running (with its
        ``started_at``, ``progress`` and ``phase``), interrupted or never_seen."""

    @command(OperationsQuery, mutates=False, inline=True)
    @abstractmethod
    def operations(self, data: OperationsQuery, ctx: Context) -> dict[str, Any]:
        """The commands queued or running now (``running``, oldest first), or the last 100 answered (``recent``,
        newest first); answered even when every pool thread is busy."""

    @command(CancelQuery, inline=True, idempotent=True)
    @abstractmethod
    def cancel(self, data: CancelQuery, ctx: Context) -> dict[str, Any]:
        """Drop a queued command (it is answered 30013 now and never runs), or tell a running cancellable one to
        stop (it answers 30013 itself once it has); 30004 if it cannot be cancelled, 30006 if not queued or
        running here. Runs on the consumer thread, so it is answered even when every pool thread is busy."""
