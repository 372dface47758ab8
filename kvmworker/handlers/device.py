"""DeviceHandler: single network devices (veth, tap, bridge, vlan, vxlan) in any namespace.

Only devices this worker made may be changed or deleted; an allowed physical interface may be
enslaved to a bridge or released, and nothing else happens to devices the worker does not own.
"""

from __future__ import annotations

from typing import Any

from kvmworker.api.device import AddressChange, DeviceApi, DeviceCreate, DeviceList, DeviceRef, DeviceSet
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.netplane import devices
from kvmworker.netplane.netlink import namespace_exists
from kvmworker.netplane.ownership import device_tag
from kvmworker.netplane.plan import AddAddress, AddLink, DeleteAddress, DeleteLink, SetLink, Step, describe, execute
from kvmworker.netplane.plane import Netplane
from kvmworker.protocol.errors import InvalidParameter, NamespaceNotFound, OperationNotAllowed


class DeviceHandler(DeviceApi):
    """Each mutating command is one list of netplane steps: its plan describes them, the command executes them."""

    def __init__(self, plane: Netplane):
        self._plane = plane

    def create(self, data: DeviceCreate, ctx: Context) -> dict[str, Any]:
        self._execute(self._creation(data), data, ctx)
        return self._show(data.name, data.namespace)

    def plan_create(self, data: DeviceCreate, ctx: Context) -> Plan:
        return Plan(describe(self._creation(data)))

    def delete(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        step = self._deletion(data)
        self._execute([step], data, ctx)
        return {"name": step.name}

    def plan_delete(self, data: DeviceRef, ctx: Context) -> Plan:
        return Plan(describe([self._deletion(data)]))

    def set(self, data: DeviceSet, ctx: Context) -> dict[str, Any]:
        step = self._change(data)
        self._execute([step], data, ctx)
        return self._show(step.name, data.netns or data.namespace)

    def plan_set(self, data: DeviceSet, ctx: Context) -> Plan:
        return Plan(describe([self._change(data)]))

    def addr_add(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        self._execute([self._address(data, AddAddress)], data, ctx)
        return self._show(data.name, data.namespace)

    def plan_addr_add(self, data: AddressChange, ctx: Context) -> Plan:
        return Plan(describe([self._address(data, AddAddress)]))

    def addr_del(self, data: AddressChange, ctx: Context) -> dict[str, Any]:
        self._execute([self._address(data, DeleteAddress)], data, ctx)
        return self._show(data.name, data.namespace)

    def plan_addr_del(self, data: AddressChange, ctx: Context) -> Plan:
        return Plan(describe([self._address(data, DeleteAddress)]))

    def list(self, data: DeviceList, ctx: Context) -> dict[str, Any]:
        links = self._plane.pool.get(data.namespace).links()
        name_of = devices.names_by_index(links)
        return {"namespace": data.namespace, "devices": [devices.device_data(link, name_of) for link in links]}

    def show(self, data: DeviceRef, ctx: Context) -> dict[str, Any]:
        return self._show(data.name, data.namespace)

    def _creation(self, data: DeviceCreate) -> list[Step]:
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
        return [AddLink(data.name, data.type, device_tag(), state=state, **fields)]

    def _deletion(self, data: DeviceRef) -> DeleteLink:
        link = devices.existing(self._plane.pool.get(data.namespace).link(data.name), data.name)
        devices.check_worker_device(link)
        return DeleteLink(link.name)

    def _change(self, data: DeviceSet) -> SetLink:
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
        return SetLink(link.name, **changes)

    def _show(self, name: str, namespace: str | None) -> dict[str, Any]:
        nl = self._plane.pool.get(namespace)
        link = devices.existing(nl.link(name), name)
        addresses = [a.cidr for a in nl.addresses(link.index)]

        def name_of(index: int) -> str | None:
            found = nl.link_at(index)
            return found.name if found else None

        return devices.device_data(link, name_of, addresses)

    def _address(self, data: AddressChange, step: type[AddAddress | DeleteAddress]) -> Step:
        link = devices.existing(self._plane.pool.get(data.namespace).link(data.name), data.name)
        devices.check_addressable(link)
        return step(data.name, data.address)

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

    def _execute(self, steps: list[Step], data: Any, ctx: Context) -> None:
        changed = [data.name, getattr(data, "peer", None), getattr(data, "master", None)]  # a port changes its bridge
        with self._plane.changes.making(ctx.msg_id, devices=changed):
            execute(steps, self._plane.pool.get(data.namespace))
