"""DeviceHandler: single network devices (veth, tap, bridge, vlan, vxlan) in any namespace.

Only devices this worker made may be changed or deleted; an allowed physical interface may be
enslaved to a bridge or released, and nothing else happens to devices the worker does not own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.netplane import devices
from kvmworker.netplane.netlink import namespace_exists
from kvmworker.netplane.ownership import device_tag
from kvmworker.netplane.plan import AddAddress, AddLink, DeleteAddress, DeleteLink, SetLink, Step, describe, execute
from kvmworker.netplane.plane import Netplane, netlink_key
from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import InvalidParameter, NamespaceNotFound, OperationNotAllowed
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
    model_config = ConfigDict(extra="forbid")

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
    model_config = ConfigDict(extra="forbid")

    namespace: NamespaceName | None = None


def _key(data: Any) -> str:
    return netlink_key(data.namespace)


class DeviceHandler:
    name = "DeviceHandler"

    def __init__(self, plane: Netplane):
        self._plane = plane

    @command(DeviceCreate, resource=_key)
    def create(self, data: DeviceCreate, ctx: Context) -> dict[str, Any]:
        nl = self._plane.pool.get(data.namespace)
        for name in filter(None, (data.name, data.peer)):
            if nl.link(name) is not None:
                raise InvalidParameter(f"a device named {name} already exists", field="name")
        state = "up"
        if data.link is not None:
            parent = devices.existing(nl.link(data.link), data.link)
            devices.check_usable_parent(parent, self._plane.physical)
            if data.type == "vlan" and not parent.up:
                state = "down"  # the kernel refuses a VLAN up on a lower device that is down (ENETDOWN)
        fields = data.model_dump(include={"mtu", "mac", "link", "vlan_id", "vni", "peer"})
        step = AddLink(data.name, data.type, device_tag(), state=state, **fields)
        return self._run([step], data, ctx, lambda: self._show(data.name, data.namespace))

    @command(DeviceRef, resource=_key)
    def delete(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        link = devices.existing(self._plane.pool.get(data.namespace).link(data.name), data.name)
        devices.check_worker_device(link)
        return self._run([DeleteLink(link.name)], data, ctx, lambda: {"name": link.name})

    @command(DeviceSet, resource=_key)
    def set(self, data: DeviceSet, ctx: Context) -> dict[str, Any]:
        changes = data.model_dump(exclude={"name", "namespace"}, exclude_unset=True)
        if not changes:
            raise InvalidParameter("nothing to change: give state, mtu, mac, master, netns or alias")
        nl = self._plane.pool.get(data.namespace)
        link = devices.existing(nl.link(data.name), data.name)
        if changes.keys() == {"master"} and self._plane.physical.permits(link):
            self._check_free_interface(link.name, data.namespace)
            if data.master is not None:
                self._plane.physical.check_uplink(link.name, nl, field="name")
        else:
            devices.check_worker_device(link)
        if "master" in changes:
            devices.check_master_change(link, data.master, nl)
        if data.netns is not None:
            self._check_target_namespace(data.netns)
        if "alias" in changes:
            changes["alias"] = device_tag(data.alias)
        step = SetLink(link.name, **changes)
        namespace = data.netns or data.namespace
        return self._run([step], data, ctx, lambda: self._show(link.name, namespace))

    @command(AddressChange, resource=_key)
    def addr_add(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        self._addressable(data)
        return self._run(
            [AddAddress(data.name, data.address)], data, ctx, lambda: self._show(data.name, data.namespace)
        )

    @command(AddressChange, resource=_key)
    def addr_del(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        self._addressable(data)
        step = DeleteAddress(data.name, data.address)
        return self._run([step], data, ctx, lambda: self._show(data.name, data.namespace))

    @command(DeviceList, mutates=False)
    def list(self, data: DeviceList, ctx: Context) -> dict[str, Any]:
        links = self._plane.pool.get(data.namespace).links()
        name_of = devices.names_by_index(links)
        return {"namespace": data.namespace, "devices": [devices.device_data(link, name_of) for link in links]}

    @command(DeviceRef, mutates=False)
    def show(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        return self._show(data.name, data.namespace)

    def close(self) -> None:
        self._plane.close()

    def _show(self, name: str, namespace: str | None) -> dict[str, Any]:
        nl = self._plane.pool.get(namespace)
        link = devices.existing(nl.link(name), name)
        addresses = [a.cidr for a in nl.addresses(link.index)]

        def name_of(index: int) -> str | None:
            found = nl.link_at(index)
            return found.name if found else None

        return devices.device_data(link, name_of, addresses)

    def _addressable(self, data: AddressChange) -> None:
        link = devices.existing(self._plane.pool.get(data.namespace).link(data.name), data.name)
        devices.check_addressable(link)

    def _check_target_namespace(self, name: str) -> None:
        """Devices go only into namespaces this worker made (or its own), never into a container's or another
        tenant's namespace that merely has a name in /run/netns."""
        if not namespace_exists(name):
            raise NamespaceNotFound(f"network namespace {name!r} does not exist", field="netns")
        if name != self._plane.pool.default and name not in self._plane.store.namespaces():
            raise OperationNotAllowed(
                f"namespace {name} was not created by this worker; devices are moved only into its own", field="netns"
            )

    def _check_free_interface(self, name: str, namespace: str | None) -> None:
        if namespace not in (None, self._plane.pool.default):
            return  # networks live in the worker's namespace
        carried = self._plane.store.on_interface(name)
        if carried:
            raise OperationNotAllowed(
                f"{name} carries network {carried[0].network_id}; use NetworkHandler", field="name"
            )

    def _run(self, steps: list[Step], data: Any, ctx: Context, result: Any) -> dict[str, Any]:
        if ctx.dry_run:
            return {"name": data.name, "dry_run": True, "operations": describe(steps)}
        changed = [data.name, getattr(data, "peer", None), getattr(data, "master", None)]  # a port changes its bridge
        with self._plane.changes.making(ctx.msg_id, devices=changed):
            execute(steps, self._plane.pool.get(data.namespace))
        return result()
