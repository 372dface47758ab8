"""The structured VM spec a caller may send to ``VmHandler.define`` instead of domain XML; ``virt`` builds the XML
from it."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from kvmworker.protocol.codes import Code
from kvmworker.protocol.types import (
    Flag,
    IfName,
    MacAddress,
    Uuid,
    absent,
    coded,
    given,
    loose_int,
    number,
    schema_rules,
    string_schema,
)

PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
"""A file, volume or pool name: never a path (the character set excludes '/' and NUL)."""
_VM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
_PLAIN_BODY = r"[A-Za-z0-9_](?:[A-Za-z0-9_+-]|\.[A-Za-z0-9_+-])*\.?"
"""``PLAIN_NAME`` without '..': every '.' is followed by another character or ends the name."""


def _check_vm_name(name: str) -> str:
    if not _VM_NAME.fullmatch(name):
        raise coded(Code.INVALID_PARAMETER, "a VM name is 1-64 of [A-Za-z0-9_.+-], not starting with '.', '-' or '+'")
    return name


def _check_plain(name: str) -> str:
    if ".." in name or not PLAIN_NAME.fullmatch(name):
        raise coded(Code.INVALID_PARAMETER, "use a plain name: [A-Za-z0-9_.+-], no '/', no '..', no NUL")
    return name


VmName = Annotated[
    str,
    AfterValidator(_check_vm_name),
    WithJsonSchema(string_schema("[A-Za-z0-9_][A-Za-z0-9_.+-]*", min_length=1, max_length=64)),
]
"""A name for a VM this worker defines."""
PlainName = Annotated[
    str, AfterValidator(_check_plain), WithJsonSchema(string_schema(_PLAIN_BODY, min_length=1, max_length=255))
]
"""A volume or pool name: never a path."""
DomainType = Literal["kvm", "qemu"]


INTERFACE_RULE = {"oneOf": [given("network_id"), given("bridge")]}
DISK_RULE = {
    "anyOf": [
        {"allOf": [given("image"), absent("volume", "pool", "size_gib", "clone_of")]},
        {"allOf": [absent("image", "clone_of"), {"anyOf": [given("volume"), given("size_gib")]}]},
        {"allOf": [given("clone_of"), absent("image", "size_gib")]},
    ]
}


class InterfaceSpec(BaseModel):
    """A NIC on a network created by NetworkHandler (``network_id``) or on any bridge."""

    model_config = ConfigDict(defer_build=True, extra="forbid", json_schema_extra=schema_rules(INTERFACE_RULE))

    network_id: Uuid | None = None
    bridge: IfName | None = None
    mac: MacAddress | None = None
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] = "virtio"

    @model_validator(mode="after")
    def _one_source(self) -> InterfaceSpec:
        if (self.network_id is None) == (self.bridge is None):
            raise coded(Code.INVALID_PARAMETER, "an interface names exactly one of 'network_id' or 'bridge'")
        return self


class DiskSpec(BaseModel):
    """``image`` (an existing file), ``volume`` (an existing pool volume), ``size_gib`` (a new qcow2 volume) or
    ``clone_of`` (a new linked clone of a pool volume or a storage-directory image, named ``volume`` if given)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", json_schema_extra=schema_rules(DISK_RULE))

    image: str | None = Field(default=None, max_length=4096)
    volume: PlainName | None = None
    pool: PlainName | None = None
    size_gib: number(gt=0, le=65536) | None = None
    clone_of: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="a volume of the pool or an image in a storage directory: the VM gets a qcow2 over it, made for "
        "it and removed with undefine remove_storage",
    )
    bus: Literal["virtio", "sata", "scsi", "ide"] = "virtio"

    @model_validator(mode="after")
    def _one_source(self) -> DiskSpec:
        if self.image is not None and (self.volume or self.pool or self.size_gib or self.clone_of):
            raise coded(Code.INVALID_PARAMETER, "a disk is either an 'image' or a pool 'volume'/'size_gib'/'clone_of'")
        if self.clone_of is not None and self.size_gib is not None:
            raise coded(Code.INVALID_PARAMETER, "a 'clone_of' disk has its source's size: no 'size_gib'")
        if self.image is None and self.volume is None and self.size_gib is None and self.clone_of is None:
            raise coded(Code.INVALID_PARAMETER, "a disk needs 'image', 'volume', 'size_gib' or 'clone_of'")
        return self


class DomainSpec(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: VmName
    vcpus: loose_int(1, 512) = 1
    memory_mib: loose_int(16, 16 * 1024 * 1024) = 512
    disks: list[DiskSpec] = Field(default_factory=list, max_length=26)
    interfaces: list[InterfaceSpec] = Field(default_factory=list, max_length=32)
    domain_type: DomainType | None = None
    graphics: Flag = False
