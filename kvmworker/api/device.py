"""DeviceHandler: single network devices (veth, tap, bridge, vlan, vxlan) in any namespace."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from kvmworker.api.resources import netlink_key
from kvmworker.dispatch.commands import command
from kvmworker.protocol.codes import Code
from kvmworker.protocol.patterns import case_insensitive, schema_pattern
from kvmworker.protocol.types import (
    Cidr,
    IfName,
    MacAddress,
    Mtu,
    NamespaceName,
    VlanId,
    Vni,
    absent,
    coded,
    given,
    one_of_words,
    schema_rules,
    string_schema,
)

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

DEVICE_TYPES = ("veth", "tap", "bridge", "vlan", "vxlan")
DeviceType = Literal["veth", "tap", "bridge", "vlan", "vxlan"]
_NEEDS = {"veth": ("peer",), "vlan": ("link", "vlan_id"), "vxlan": ("vni",)}
_OPTIONAL = {"vxlan": ("link",)}
_TYPE_FIELDS = ("peer", "link", "vlan_id", "vni")
_lower_type, _TYPE_SCHEMA = one_of_words(*DEVICE_TYPES)
_lower_state, _STATE_SCHEMA = one_of_words("up", "down")


def _type_rule(kind: str) -> dict[str, Any]:
    """What ``_fields_fit_type`` checks for one device type, as JSON Schema (``peer != name`` it cannot say)."""
    needed = _NEEDS.get(kind, ())
    unwanted = [f for f in _TYPE_FIELDS if f not in needed + _OPTIONAL.get(kind, ())]
    then = {"allOf": [given(*needed), absent(*unwanted)]} if needed else absent(*unwanted)
    word = {"type": "string", "pattern": schema_pattern(case_insensitive(kind))}
    when = {"required": ["type"], "properties": {"type": word}}
    return {"if": when, "then": then}


def _check_alias(alias: str) -> str:
    if not alias.isprintable():
        raise coded(Code.INVALID_PARAMETER, "must be printable text")
    return alias


_ALIAS_SCHEMA = string_schema(
    r"[^\x00-\x1f\x7f-\x9f]*",
    max_length=200,
    description="printable text: no control characters (the worker also refuses other characters Python's "
    "str.isprintable() refuses, such as format characters and unassigned code points)",
)

Alias = Annotated[str, Field(max_length=200), AfterValidator(_check_alias), WithJsonSchema(_ALIAS_SCHEMA)]


def _with_prefix(address: object) -> object:
    """Runs before the CIDR check, on raw input: anything but a string is left for that check to refuse."""
    if isinstance(address, str) and "/" not in address:
        raise coded(Code.INVALID_PARAMETER, "needs a prefix length, e.g. 10.0.0.1/24")
    return address


class _OnDevice(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: IfName
    namespace: NamespaceName | None = Field(default=None, description="default: the worker's namespace")


class DeviceCreate(_OnDevice):
    model_config = ConfigDict(json_schema_extra=schema_rules(*(_type_rule(kind) for kind in DEVICE_TYPES)))

    type: Annotated[DeviceType, BeforeValidator(_lower_type), WithJsonSchema(_TYPE_SCHEMA)]
    peer: IfName | None = Field(
        default=None,
        description="veth: the other end, named unlike `name` (the worker checks that; JSON Schema cannot)",
    )
    link: IfName | None = Field(default=None, description="vlan (required) / vxlan: the lower device")
    vlan_id: VlanId | None = None
    vni: Vni | None = None
    mtu: Mtu | None = None
    mac: MacAddress | None = None

    @model_validator(mode="after")
    def _fields_fit_type(self) -> DeviceCreate:
        for needed in _NEEDS.get(self.type, ()):
            if getattr(self, needed) is None:
                raise coded(Code.INVALID_PARAMETER, f"a {self.type} device needs {needed}")
        allowed = _NEEDS.get(self.type, ()) + _OPTIONAL.get(self.type, ())
        for extra in _TYPE_FIELDS:
            if extra not in allowed and getattr(self, extra) is not None:
                raise coded(Code.INVALID_PARAMETER, f"{extra} does not apply to a {self.type} device")
        if self.peer == self.name:
            raise coded(Code.INVALID_PARAMETER, "a veth peer needs a name of its own")
        return self


class DeviceRef(_OnDevice):
    pass


class DeviceSet(_OnDevice):
    state: Annotated[Literal["up", "down"], BeforeValidator(_lower_state), WithJsonSchema(_STATE_SCHEMA)] | None = None
    mtu: Mtu | None = None
    mac: MacAddress | None = None
    master: IfName | None = Field(default=None, description="a bridge to enslave to; null releases")
    netns: NamespaceName | None = Field(default=None, description="move the device into this namespace")
    alias: Alias | None = None


class AddressChange(_OnDevice):
    address: Annotated[Cidr, BeforeValidator(_with_prefix)]


class DeviceList(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    namespace: NamespaceName | None = None


def device_key(data: Any) -> str:
    """Devices change one command at a time per namespace."""
    return netlink_key(data.namespace)


class DeviceApi(ABC):
    name = "DeviceHandler"

    @command(DeviceCreate, resource=device_key)
    @abstractmethod
    def create(self, data: DeviceCreate, ctx: Context) -> dict[str, Any]:
        """A new device of the given type, tagged as the worker's, up (a VLAN on a lower device that is down stays
        down)."""

    @command(DeviceRef, resource=device_key)
    @abstractmethod
    def delete(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        """Delete a device the worker made."""

    @command(DeviceSet, resource=device_key)
    @abstractmethod
    def set(self, data: DeviceSet, ctx: Context) -> dict[str, Any]:
        """Change a worker device's state, MTU, MAC, master, namespace or alias; an allowed physical interface may
        only be enslaved to a bridge or released."""

    @command(AddressChange, resource=device_key)
    @abstractmethod
    def addr_add(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        """Add an address (with its prefix length) to a device."""

    @command(AddressChange, resource=device_key)
    @abstractmethod
    def addr_del(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        """Remove an address from a device."""

    @command(DeviceList, mutates=False)
    @abstractmethod
    def list(self, data: DeviceList, ctx: Context) -> dict[str, Any]:
        """Every device of a namespace."""

    @command(DeviceRef, mutates=False)
    @abstractmethod
    def show(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        """One device with its addresses."""
