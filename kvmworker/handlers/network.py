"""NetworkHandler (the documented one): flat and VLAN networks as Linux bridges, remembered across restarts."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

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

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.netplane import networks
from kvmworker.netplane.plan import describe, execute
from kvmworker.netplane.plane import Netplane, netlink_key
from kvmworker.netplane.store import Network
from kvmworker.protocol import patterns
from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import DeviceNotFound, KvmError
from kvmworker.protocol.patterns import case_insensitive, fullmatch, schema_pattern
from kvmworker.protocol.types import UUID_SCHEMA, IfName, Mtu, VlanId, coded, one_of_words, schema_rules

log = logging.getLogger("kvmworker.network")


_UUID = fullmatch(patterns.UUID)
_lower_type, _TYPE_SCHEMA = one_of_words(networks.FLAT, networks.VLAN)


def _uuid(value: object) -> str:
    if isinstance(value, str) and _UUID.fullmatch(value):
        return str(uuid.UUID(value))
    raise coded(Code.INVALID_PARAMETER, "must be a UUID, e.g. 5b0503ba-1af4-11ea-baa2-000c2902e179")


def _network_type(value: object) -> str:
    if value is None:
        raise coded(Code.UNSUPPORTED_NETWORK_TYPE, "required: flat or vlan")
    kind = _lower_type(value)
    if kind not in (networks.FLAT, networks.VLAN):
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
    _vlan_rule(networks.VLAN, {"required": ["vlan_id"], "properties": {"vlan_id": {"not": {"enum": [None, ""]}}}}),
    _vlan_rule(networks.FLAT, {"properties": {"vlan_id": {"enum": [None, ""]}}}),
)


def _network_schema(schema: dict[str, Any]) -> None:
    _required_in_schema(schema)
    schema_rules(*_VLAN_RULES)(schema)


NetworkId = Annotated[str, BeforeValidator(_uuid), WithJsonSchema(UUID_SCHEMA)]
NetworkType = Annotated[str, BeforeValidator(_network_type), WithJsonSchema(_TYPE_SCHEMA)]
PhysicalInterface = Annotated[IfName, BeforeValidator(_interface_given)]
_VLAN_OR_BLANK = {"anyOf": [TypeAdapter(VlanId).json_schema(), {"type": "null"}, {"const": ""}]}


class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_network_schema)

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
        if kind == networks.VLAN and vlan_id is None:
            raise coded(Code.INVALID_PARAMETER, "required for a vlan network (1-4094)")
        if kind == networks.FLAT and vlan_id is not None:
            raise coded(Code.INVALID_PARAMETER, "applies only to vlan networks")
        return vlan_id


class NetworkRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    network_id: NetworkId


_IN_WORKER_NAMESPACE = netlink_key(None)


def _devices(network: Network) -> list[str | None]:
    """What a network command changes besides the network: link events about these carry its msg_id."""
    return [network.bridge, network.subinterface, network.physical_interface]


class NetworkHandler:
    name = "NetworkHandler"

    def __init__(self, plane: Netplane):
        self._plane = plane
        self._restored: dict[str, list[str]] = {}

    @command(NetworkCreate, resource=lambda data: _IN_WORKER_NAMESPACE, idempotent=True)
    def create(self, data: NetworkCreate, ctx: Context) -> dict[str, Any]:
        store = self._plane.store
        network = networks.new_network(
            data.network_id, data.network_type, data.physical_interface, data.vlan_id, data.mtu
        )
        known = store.get(network.network_id)
        if known is not None:
            networks.check_same_parameters(known, network)
        else:
            networks.check_conflicts(store, network)
        nl = self._plane.pool.get()
        steps = networks.plan_network(network, nl, self._plane.physical)
        if ctx.dry_run:
            return networks.network_data(network) | {"dry_run": True, "operations": describe(steps)}
        with self._plane.changes.making(ctx.msg_id, networks=[network.network_id], devices=_devices(network)):
            execute(steps, nl, commit=None if known else lambda: store.add(network))
        return networks.network_data(network)

    @command(NetworkRef, resource=lambda data: _IN_WORKER_NAMESPACE)
    def delete(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        network = self._known(data.network_id)
        nl = self._plane.pool.get()
        steps, foreign = networks.plan_removal(network, nl)
        reply = {"name": network.bridge, "network_id": network.network_id, "left_alone": foreign}
        if ctx.dry_run:
            return reply | {"dry_run": True, "operations": describe(steps)}
        with self._plane.changes.making(ctx.msg_id, networks=[network.network_id], devices=_devices(network)):
            execute(steps, nl, commit=lambda: self._plane.store.remove(network.network_id))
        self._restored.pop(network.network_id, None)
        return reply | {"operations": describe(steps)}

    @command(mutates=False)
    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        known = self._plane.store.all()
        if not known:
            return {"networks": []}
        lookup = networks.bridge_view(self._plane.pool.get())
        return {"networks": [self._state(n, networks.drift(n, lookup, check_alias=False)) for n in known]}

    @command(NetworkRef, mutates=False)
    def show(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        network = self._known(data.network_id)
        return self._state(network, networks.drift(network, self._plane.pool.get().link))

    def on_start(self) -> None:
        """Put back what the kernel lost (after a reboot: bridges, subinterfaces, enslavement, up state)."""
        known = self._plane.store.all()
        if not known:
            return
        try:
            lookup = networks.bridge_view(self._plane.pool.get())
        except KvmError as exc:
            log.error("cannot check %d remembered networks: %s", len(known), exc.detail)
            return
        for network in known:
            problems = networks.drift(network, lookup, check_alias=False)
            if problems:
                self._restore(network, problems)

    def close(self) -> None:
        self._plane.close()

    def _restore(self, network: Network, problems: list[str]) -> None:
        nl = self._plane.pool.get()
        try:
            steps = networks.plan_network(network, nl, self._plane.physical)
            with self._plane.changes.making(None, networks=[network.network_id]):
                execute(steps, nl)
        except KvmError as exc:
            log.error("network %s: %s; not restored: %s", network.network_id, "; ".join(problems), exc.detail)
            return
        except Exception:  # one network's surprise must not keep the others from being restored
            log.exception("network %s: %s; not restored", network.network_id, "; ".join(problems))
            return
        self._restored[network.network_id] = problems
        log.warning(
            "network %s restored (%s): %s",
            network.network_id,
            "; ".join(problems),
            ", ".join(f"{s['op']} {s['name']}" for s in describe(steps)),
        )

    def _known(self, network_id: str) -> Network:
        network = self._plane.store.get(network_id)
        if network is None:
            raise DeviceNotFound(f"network {network_id} does not exist", field="network_id")
        return network

    def _state(self, network: Network, problems: list[str]) -> dict[str, Any]:
        state = networks.network_data(network) | {"state": "drift" if problems else "ok", "drift": problems}
        if network.network_id in self._restored:
            state["restored_at_start"] = self._restored[network.network_id]
        return state
