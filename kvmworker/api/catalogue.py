"""Every command the worker answers, and the bridge's own, as declared: no handler is built to list them."""

from __future__ import annotations

from kvmworker.api.device import DeviceApi
from kvmworker.api.host import HostApi
from kvmworker.api.namespace import NamespaceApi
from kvmworker.api.network import NetworkApi
from kvmworker.api.storage import StorageApi
from kvmworker.api.system import SystemApi
from kvmworker.api.user import UserApi
from kvmworker.api.vm import VmApi
from kvmworker.dispatch.commands import Declared, declared

WORKER_APIS: tuple[type, ...] = (NetworkApi, NamespaceApi, DeviceApi, VmApi, HostApi, StorageApi, SystemApi)
"""The handlers a worker runs (``kvmworker.app`` builds one of each)."""
BRIDGE_APIS: tuple[type, ...] = (UserApi,)
"""The handlers the HTTP bridge answers itself."""


def worker_commands() -> list[Declared]:
    return [command for api in WORKER_APIS for command in declared(api)]


def bridge_commands() -> list[Declared]:
    return [command for api in BRIDGE_APIS for command in declared(api)]
