"""NamespaceHandler: named network namespaces (``/run/netns``), as ``ip netns`` keeps them.

The worker deletes only namespaces it created (remembered in its store), and never its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.context import Context
from kvmworker.netplane import devices
from kvmworker.netplane.namespaces import create_namespace, delete_namespace, list_namespaces
from kvmworker.netplane.netlink import namespace_exists
from kvmworker.netplane.plane import Netplane, netlink_key
from kvmworker.protocol.errors import InvalidParameter, NamespaceNotFound, OperationNotAllowed
from kvmworker.protocol.types import NamespaceName


class NamespaceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NamespaceName


def _key(data: NamespaceRef) -> str:
    return netlink_key(data.name)


class NamespaceHandler:
    name = "NamespaceHandler"

    def __init__(self, plane: Netplane):
        self._plane = plane

    @command(NamespaceRef, resource=_key)
    def create(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        store = self._plane.store
        if namespace_exists(data.name):
            if data.name in store.namespaces():
                return {"name": data.name, "created": False}
            raise InvalidParameter(f"namespace {data.name} already exists and was not created by this worker")
        if ctx.dry_run:
            return {"name": data.name, "dry_run": True, "operations": [{"op": "netns_add", "name": data.name}]}
        create_namespace(data.name)
        try:
            store.add_namespace(data.name)
        except BaseException:
            delete_namespace(data.name)
            raise
        return {"name": data.name, "created": True}

    @command(NamespaceRef, resource=_key)
    def delete(self, data: NamespaceRef, ctx: Context) -> dict[str, Any]:
        self._existing(data.name)
        if data.name == self._plane.pool.default:
            raise OperationNotAllowed(f"{data.name} is the worker's own namespace", field="name")
        if data.name not in self._plane.store.namespaces():
            raise OperationNotAllowed(f"namespace {data.name} was not created by this worker", field="name")
        if ctx.dry_run:
            return {"name": data.name, "dry_run": True, "operations": [{"op": "netns_del", "name": data.name}]}
        self._plane.pool.forget(data.name)
        delete_namespace(data.name)
        self._plane.store.remove_namespace(data.name)
        return {"name": data.name}

    @command(mutates=False)
    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        owned = self._plane.store.namespaces()
        return {"namespaces": [{"name": name, "owned": name in owned} for name in list_namespaces()]}

    @command(NamespaceRef, mutates=False)
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

    @staticmethod
    def _existing(name: str) -> None:
        if not namespace_exists(name):
            raise NamespaceNotFound(f"network namespace {name!r} does not exist", field="name")
