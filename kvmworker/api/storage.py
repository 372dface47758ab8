"""StorageHandler (*extension*): libvirt storage pools and their volumes (INTERFACE §3).

Names follow the VM storage rules (``PlainName``: no '/', no '..', no NUL, not hidden); a missing pool or volume
is 30010. ``volume_clone`` makes a linked clone (a qcow2 over the source, its backing format named explicitly) or a
full copy (long-running: progress and cancel, INTERFACE §8).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kvmworker.api.domain import PlainName
from kvmworker.api.resources import volume_key
from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import Flag, number

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

SizeGib = number(gt=0, le=65536)


class PoolRef(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    pool: PlainName | None = Field(default=None, description="a libvirt storage pool; default: --storage-pool")


class VolumeRef(PoolRef):
    name: PlainName

    @property
    def key(self) -> str:
        return volume_key(self.pool, self.name)


class VolumeCreate(VolumeRef):
    size_gib: SizeGib
    format: Literal["qcow2", "raw"] = "qcow2"


class VolumeClone(VolumeRef):
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="a volume of the pool, or an image in a storage directory (a plain name or an absolute path "
        "inside one; links are followed and must stay inside)",
    )
    linked: Flag = Field(default=True, description="a qcow2 over the source (default), or a full copy (false)")
    size_gib: SizeGib | None = Field(default=None, description="grow the clone to this size (never below the source)")


class VolumeResize(VolumeRef):
    size_gib: SizeGib


def of_volume(data: VolumeRef) -> str:
    return data.key


class StorageApi(ABC):
    name = "StorageHandler"

    @command(mutates=False)
    @abstractmethod
    def pools(self, data: Any, ctx: Context) -> dict[str, Any]:
        """Every storage pool: type, path, state, autostart, capacity, allocation, available (bytes)."""

    @command(PoolRef, mutates=False)
    @abstractmethod
    def volumes(self, data: PoolRef, ctx: Context) -> dict[str, Any]:
        """The pool's volumes with their format, sizes, backing file, the VMs using them and the volumes over them."""

    @command(VolumeCreate, resource=of_volume, idempotent=True)
    @abstractmethod
    def volume_create(self, data: VolumeCreate, ctx: Context) -> dict[str, Any]:
        """A new empty volume; an identical existing one is success (``changed: false``), a different one 30006."""

    @command(VolumeClone, resource=of_volume, idempotent=True, cancellable=True)
    @abstractmethod
    def volume_clone(self, data: VolumeClone, ctx: Context) -> dict[str, Any]:
        """A linked clone (qcow2 over the source, backing format explicit) or a full copy (progress, cancellable;
        a cancelled or failed copy leaves no file). A matching existing clone is success (``changed: false``)."""

    @command(VolumeResize, resource=of_volume, idempotent=True)
    @abstractmethod
    def volume_resize(self, data: VolumeResize, ctx: Context) -> dict[str, Any]:
        """Grow a volume (shrinking is 30006); through the VM (``blockResize``) when a running VM uses it."""

    @command(VolumeRef, resource=of_volume)
    @abstractmethod
    def volume_delete(self, data: VolumeRef, ctx: Context) -> dict[str, Any]:
        """Delete a volume no VM uses and no volume is backed by (else 30004)."""
