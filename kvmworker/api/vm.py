"""VmHandler: VM lifecycle through the worker's one libvirt connection (INTERFACE §3).

A VM is addressed by ``name`` or ``uuid``; unknown keys of a VM reference are ignored.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from kvmworker.api.domain import INTERFACE_RULE, DomainSpec, InterfaceSpec, VmName
from kvmworker.dispatch.commands import command
from kvmworker.protocol import safe_xml
from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import InvalidParameter
from kvmworker.protocol.types import (
    Flag,
    MacAddress,
    Uuid,
    coded,
    given,
    loose_int,
    matching,
    number,
    schema_rules,
    string_schema,
)

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

MAX_XML = 256 * 1024
_LOOKUP_NAME = re.compile(r"[^\x00-\x1f/]{1,255}")
StateFilter = Literal["active", "inactive", "running", "paused", "shutoff", "other", "persistent", "transient"]


def _check_lookup_name(name: str) -> str:
    # VMs defined by others may have any name libvirt accepts; only refuse what libvirt never would.
    if not _LOOKUP_NAME.fullmatch(name):
        raise coded(Code.INVALID_PARAMETER, "a VM name is 1-255 characters without '/' or control characters")
    return name


LookupName = Annotated[
    str,
    AfterValidator(_check_lookup_name),
    WithJsonSchema(string_schema(r"[^\x00-\x1f/]*", min_length=1, max_length=255)),
]
"""A name to look an existing VM up by."""
VM_REF_RULE = {"anyOf": [given("name"), given("uuid")]}


class VmRef(BaseModel):
    """A VM addressed by ``name`` or ``uuid`` (the uuid wins when both are given and they must agree)."""

    model_config = ConfigDict(defer_build=True, extra="ignore", json_schema_extra=schema_rules(VM_REF_RULE))

    name: LookupName | None = None
    uuid: Uuid | None = None

    @model_validator(mode="after")
    def _one_of(self) -> VmRef:
        if self.name is None and self.uuid is None:
            raise coded(Code.INVALID_PARAMETER, "address the VM by 'name' or 'uuid'")
        return self

    @property
    def key(self) -> str:
        return f"vm:{self.uuid or self.name}"

    @property
    def label(self) -> str:
        return str(self.uuid or self.name)


class ListData(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")
    state: StateFilter | None = None


class ShutdownData(VmRef):
    timeout: number(gt=0, le=3600) = 60.0
    force: Flag = False


class AutostartData(VmRef):
    enabled: Flag


class UndefineData(VmRef):
    remove_storage: Flag = False


class AttachInterfaceData(VmRef, InterfaceSpec):
    model_config = ConfigDict(extra="ignore", json_schema_extra=schema_rules(VM_REF_RULE, INTERFACE_RULE))


class DetachInterfaceData(VmRef):
    mac: MacAddress


XML_OR_SPEC_RULE = {
    "if": {"required": ["xml"], "properties": {"xml": {"type": "string"}}},
    "then": {"propertyNames": {"const": "xml"}},
    "else": given("name"),
}


class DefineData(DomainSpec):
    """Either ``xml`` (raw domain XML) or the structured spec's fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=schema_rules(XML_OR_SPEC_RULE))

    xml: str | None = Field(
        default=None,
        max_length=MAX_XML,
        json_schema_extra={"contentMediaType": "application/xml"},
        description="libvirt domain XML: well-formed, a <domain> with a <name> (checked by the worker, "
        "not expressible in JSON Schema)",
    )
    name: VmName | None = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _xml_or_spec(self) -> DefineData:
        if self.xml is None and self.name is None:
            raise coded(Code.INVALID_PARAMETER, "send 'xml' or a structured spec with at least 'name'")
        if self.xml is not None and self.model_fields_set - {"xml"}:
            mixed = ", ".join(sorted(self.model_fields_set - {"xml"}))
            raise coded(Code.INVALID_PARAMETER, f"send either 'xml' or the spec's fields, not both (got {mixed})")
        if self.xml is not None:
            self.name = xml_name(self.xml)
        return self

    def spec(self) -> DomainSpec:
        return DomainSpec.model_validate(self.model_dump(exclude={"xml"}))


def xml_name(xml: str) -> str:
    try:
        root = safe_xml.parse(xml)
    except InvalidParameter as exc:
        raise coded(Code.INVALID_PARAMETER, exc.detail) from None
    name = root.findtext("name")
    if root.tag != "domain" or not name:
        raise coded(Code.INVALID_PARAMETER, "xml must be a <domain> with a <name>")
    return name


def vm_key(data: VmRef) -> str:
    return data.key


def define_key(data: DefineData) -> str:
    return f"vm:{data.name}"


_TEXT = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*"
"""Free text libvirt can hold in XML: no control characters but tab and newlines."""


class SnapshotRef(VmRef):
    """A snapshot of a VM; snapshot names follow the VM-name rules."""

    snapshot: VmName


class SnapshotCreateData(SnapshotRef):
    description: str | None = Field(default=None, max_length=1024, pattern=f"^{_TEXT}$")
    memory: Flag = False
    quiesce: Flag = False


class SnapshotDeleteData(SnapshotRef):
    children: Flag = False


HOST_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
"""A host name (RFC 1123 labels): it goes into ``--migration-uri``, so no URI syntax (``:/?@#``) gets in."""
HostName = Annotated[
    str,
    Field(min_length=1, max_length=253),
    matching(HOST_NAME, "destination must be a host name (letters, digits, '.', '-'), not a URI"),
    WithJsonSchema(string_schema(HOST_NAME, min_length=1, max_length=253)),
]


class MigrateData(VmRef):
    destination: HostName = Field(description="The destination host's name; --migration-uri makes its libvirt URI.")
    live: Flag = True
    persistent: Flag = Field(default=True, description="Defined on the destination and undefined on the source.")
    max_downtime_ms: loose_int(1, 60_000) | None = None
    bandwidth_mib: loose_int(1, 1_000_000) | None = Field(default=None, description="MiB/s at most.")
    auto_converge: Flag = False
    postcopy: Flag = Field(default=False, description="Switch to post-copy when pre-copy stops making progress.")
    timeout: number(gt=0, le=86_400) | None = Field(
        default=None, description="Seconds for the whole migration; default 800 s per GiB of RAM, at least 120 s."
    )


class StatsData(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")
    names: list[LookupName] | None = Field(default=None, max_length=1000)


class VmApi(ABC):
    name = "VmHandler"

    @command(ListData, mutates=False)
    @abstractmethod
    def list(self, data: ListData, ctx: Context) -> dict[str, Any]:
        """Every domain (or those in a state) with its state."""

    @command(VmRef, resource=vm_key, mutates=False)
    @abstractmethod
    def info(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """One domain: state, vCPUs, memory, disks, interfaces, graphics, consoles (40502 when libvirt fails)."""

    @command(VmRef, resource=vm_key, mutates=False)
    @abstractmethod
    def console(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Where to reach the domain's graphics and consoles."""

    @command(VmRef, resource=vm_key, idempotent=True)
    @abstractmethod
    def start(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Start a defined domain (``changed: false`` when it already runs)."""

    @command(VmRef, resource=vm_key, idempotent=True)
    @abstractmethod
    def destroy(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Power the domain off at once."""

    @command(VmRef, resource=vm_key)
    @abstractmethod
    def reboot(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Ask the guest to reboot (ACPI)."""

    @command(VmRef, resource=vm_key, idempotent=True)
    @abstractmethod
    def suspend(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Pause the domain's vCPUs."""

    @command(VmRef, resource=vm_key, idempotent=True)
    @abstractmethod
    def resume(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """Run a paused domain again."""

    @command(ShutdownData, resource=vm_key, idempotent=True, cancellable=True)
    @abstractmethod
    def shutdown(self, data: ShutdownData, ctx: Context) -> dict[str, Any]:
        """ACPI shutdown, waiting up to ``timeout`` seconds; then 30008, or with ``force`` a destroy."""

    @command(AutostartData, resource=vm_key, idempotent=True)
    @abstractmethod
    def autostart(self, data: AutostartData, ctx: Context) -> dict[str, Any]:
        """Start the domain with the host, or not."""

    @command(DefineData, resource=define_key)
    @abstractmethod
    def define(self, data: DefineData, ctx: Context) -> dict[str, Any]:
        """Define a domain from checked XML, or from the structured spec (creating its new volumes)."""

    @command(UndefineData, resource=vm_key)
    @abstractmethod
    def undefine(self, data: UndefineData, ctx: Context) -> dict[str, Any]:
        """Undefine a stopped domain; with ``remove_storage`` also the volumes the worker created for it."""

    @command(AttachInterfaceData, resource=vm_key)
    @abstractmethod
    def attach_interface(self, data: AttachInterfaceData, ctx: Context) -> dict[str, Any]:
        """Add a NIC on a network or a bridge (live and persistent when the domain runs)."""

    @command(DetachInterfaceData, resource=vm_key)
    @abstractmethod
    def detach_interface(self, data: DetachInterfaceData, ctx: Context) -> dict[str, Any]:
        """Remove the NIC with this MAC."""

    @command(SnapshotCreateData, resource=vm_key, idempotent=True)
    @abstractmethod
    def snapshot_create(self, data: SnapshotCreateData, ctx: Context) -> dict[str, Any]:
        """An internal snapshot: the disks (qcow2) of a stopped VM, or a running VM's disks and memory."""

    @command(VmRef, resource=vm_key, mutates=False)
    @abstractmethod
    def snapshot_list(self, data: VmRef, ctx: Context) -> dict[str, Any]:
        """The VM's snapshots as a tree: each with its parent, and which one is current."""

    @command(SnapshotRef, resource=vm_key, idempotent=True)
    @abstractmethod
    def snapshot_revert(self, data: SnapshotRef, ctx: Context) -> dict[str, Any]:
        """Return the VM to the snapshot's disks and, when taken with memory, its running state."""

    @command(SnapshotDeleteData, resource=vm_key)
    @abstractmethod
    def snapshot_delete(self, data: SnapshotDeleteData, ctx: Context) -> dict[str, Any]:
        """Delete a snapshot; one with children only with ``children: true`` (then them too)."""

    @command(MigrateData, resource=vm_key, cancellable=True)
    @abstractmethod
    def migrate(self, data: MigrateData, ctx: Context) -> dict[str, Any]:
        """Live-migrate the VM to another host; afterwards it runs on exactly one of them (30012, 30013)."""

    @command(StatsData, mutates=False)
    @abstractmethod
    def stats(self, data: StatsData, ctx: Context) -> dict[str, Any]:
        """Per-VM figures from one bulk libvirt call, bounded in time: a VM that does not answer is ``stale``."""
