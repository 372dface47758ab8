"""NamespaceHandler: named network namespaces (``/run/netns``), as ``ip netns`` keeps them.

The worker deletes only namespaces it created (remembered in its store), and never its own.
"""

from __future__ import annotations

from typing import Any

from kvmworker.api.namespace import NamespaceApi, NamespaceRef
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.netplane import devices
from kvmworker.netplane.namespaces import create_namespace, delete_namespace, list_namespaces
from kvmworker.netplane.netlink import namespace_exists
from kvmworker.netplane.plane import Netplane
from kvmworker.protocol.errors import InvalidParameter, NamespaceNotFound, OperationNotAllowed


class NamespaceHandler(NamespaceApi):
    def __init__(self, plane: Netplane):
        self._plane = plane

    def create(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        if self._made_already(data.name):
            return {"name": data.name, "created": False}
        create_namespace(data.name)
        try:
            self._plane.store.add_namespace(data.name)
        except BaseException:
            delete_namespace(data.name)
            raise
        return {"name": data.name, "created": True}

    def plan_create(self, data: NamespaceRef, ctx: Context) -> Plan:
        return Plan([] if self._made_already(data.name) else [{"op": "netns_add", "name": data.name}])

    def delete(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        self._check_deletable(data.name)
        self._plane.pool.forget(data.name)
        delete_namespace(data.name)
        self._plane.store.remove_namespace(data.name)
        return {"name": data.name}

    def plan_delete(self, data: NamespaceRef, ctx: Context) -> Plan:
        self._check_deletable(data.name)
        return Plan([{"op": "netns_del", "name": data.name}])

    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        owned = self._plane.store.namespaces()
        return {"namespaces": [{"name": name, "owned": name in owned} for name in list_namespaces()]}

    def show(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        self._existing(data.name)
        nl = self._plane.pool.get(data.name)
        links = nl.links()
        addresses: dict[int, list[str]] = {}
        for address in nl.addresses():
            addresses.setdefault(address.index, []).append(address.cidr)
        name_of = devices.names_by_index(links)
        return {
            "name": data.name,
            "owned": data.name in self._plane.store.namespaces(),
            "devices": [devices.device_data(link, name_of, addresses.get(link.index, [])) for link in links],
        }

    def _made_already(self, name: str) -> bool:
        """True when this worker made the namespace before; a namespace of someone else's is refused."""
        if not namespace_exists(name):
            return False
        if name in self._plane.store.namespaces():
            return True
        raise InvalidParameter(f"namespace {name} already exists and was not created by this worker")

    def _check_deletable(self, name: str) -> None:
        self._existing(name)
        if name == self._plane.pool.default:
            raise OperationNotAllowed(f"{name} is the worker's own namespace", field="name")
        if name not in self._plane.store.namespaces():
            raise OperationNotAllowed(f"namespace {name} was not created by this worker", field="name")

    @staticmethod
    def _existing(name: str) -> None:
        if not namespace_exists(name):
            raise NamespaceNotFound(f"network namespace {name!r} does not exist", field="name")
