"""NetworkHandler (the documented one): flat and VLAN networks as Linux bridges, remembered across restarts."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from kvmworker.api.resources import netlink_key
from kvmworker.dispatch.commands import command
from kvmworker.protocol import patterns
from kvmworker.protocol.codes import Code
from kvmworker.protocol.patterns import case_insensitive, fullmatch, schema_pattern
from kvmworker.protocol.types import UUID_SCHEMA, IfName, Mtu, VlanId, coded, one_of_words, schema_rules

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

FLAT, VLAN = "flat", "vlan"

_UUID = fullmatch(patterns.UUID)
_lower_type, _TYPE_SCHEMA = one_of_words(FLAT, VLAN)


def _uuid(value: object) -> str:
    if isinstance(value, str) and _UUID.fullmatch(value):
        return str(uuid.UUID(value))
    raise coded(Code.INVALID_PARAMETER, "must be a UUID, e.g. 5b0503ba-1af4-11ea-baa2-000c2902e179")


def _network_type(value: object) -> str:
    if value is None:
        raise coded(Code.UNSUPPORTED_NETWORK_TYPE, "required: flat or vlan")
    kind = _lower_type(value)
    if kind not in (FLAT, VLAN):
        raise coded(Code.UNSUPPORTED_NETWORK_TYPE, f"{value!r} is not supported; use flat or vlan")
    return kind


def _interface_given(value: object) -> object:
    if value is None or value == "":
        raise coded(Code.DEVICE_NOT_FOUND, "required: the interface the network uses")
    return value


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


def _required_in_schema(schema: dict[str, Any]) -> None:
    """Absent, these two are answered with their own codes (30001, 30003), hence a None default in the
    model; callers must still send them, and the schema says so."""
    for name in ("network_type", "physical_interface"):
        schema["properties"][name].pop("default", None)
        schema["required"].append(name)


def _vlan_rule(kind: str, then: dict[str, Any]) -> dict[str, Any]:
    pattern = schema_pattern(case_insensitive(kind))
    return {"if": {"required": ["network_type"], "properties": {"network_type": {"pattern": pattern}}}, "then": then}


_VLAN_RULES = (
    _vlan_rule(VLAN, {"required": ["vlan_id"], "properties": {"vlan_id": {"not": {"enum": [None, ""]}}}}),
    _vlan_rule(FLAT, {"properties": {"vlan_id": {"enum": [None, ""]}}}),
)


def _network_schema(schema: dict[str, Any]) -> None:
    _required_in_schema(schema)
    schema_rules(*_VLAN_RULES)(schema)


NetworkId = Annotated[str, BeforeValidator(_uuid), WithJsonSchema(UUID_SCHEMA)]
NetworkType = Annotated[str, BeforeValidator(_network_type), WithJsonSchema(_TYPE_SCHEMA)]
PhysicalInterface = Annotated[IfName, BeforeValidator(_interface_given)]
_VLAN_OR_BLANK = {"anyOf": [TypeAdapter(VlanId).json_schema(), {"type": "null"}, {"const": ""}]}


class NetworkCreate(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", json_schema_extra=_network_schema)

    network_id: NetworkId
    network_type: NetworkType = Field(default=None, validate_default=True, description="flat or vlan, in any case")
    physical_interface: PhysicalInterface = Field(default=None, validate_default=True)
    vlan_id: Annotated[VlanId | None, BeforeValidator(_blank_is_none), WithJsonSchema(_VLAN_OR_BLANK)] = Field(
        default=None, validate_default=True, description="1-4094, vlan networks only; a string of digits is accepted"
    )
    mtu: Mtu | None = Field(default=None, description="applied to the bridge and the VLAN subinterface")

    @field_validator("vlan_id")
    @classmethod
    def _vlan_id_matches_type(cls, vlan_id: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("network_type")
        if kind == VLAN and vlan_id is None:
            raise coded(Code.INVALID_PARAMETER, "required for a vlan network (1-4094)")
        if kind == FLAT and vlan_id is not None:
            raise coded(Code.INVALID_PARAMETER, "applies only to vlan networks")
        return vlan_id


class NetworkRef(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    network_id: NetworkId


def in_worker_namespace(data: object) -> str:
    """Networks live in the worker's namespace: they change one command at a time, with its devices."""
    return netlink_key(None)


class NetworkApi(ABC):
    name = "NetworkHandler"

    @command(NetworkCreate, resource=in_worker_namespace, idempotent=True)
    @abstractmethod
    def create(self, data: NetworkCreate, ctx: Context) -> dict[str, Any]:
        """The network's bridge (and VLAN subinterface) on its interface, remembered; the same create again
        changes nothing, a different one for the same network_id is refused."""

    @command(NetworkRef, resource=in_worker_namespace)
    @abstractmethod
    def delete(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        """Remove what create made (the interface is released, never deleted) and forget the network."""

    @command(mutates=False)
    @abstractmethod
    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        """Every remembered network with its state: ok, or drift and what differs."""

    @command(NetworkRef, mutates=False)
    @abstractmethod
    def show(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        """One network's parameters and state."""
