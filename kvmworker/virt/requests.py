"""The data of each VmHandler command, validated at the edge (unknown keys of a VM reference are ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import InvalidParameter
from kvmworker.protocol.types import Flag, MacAddress, coded, given, number, schema_rules
from kvmworker.virt import safe_xml
from kvmworker.virt.spec import INTERFACE_RULE, VM_REF_RULE, DomainSpec, InterfaceSpec, VmName, VmRef
from kvmworker.virt.states import StateFilter

MAX_XML = 256 * 1024


class ListData(BaseModel):
    model_config = ConfigDict(extra="ignore")
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
