"""Wiring: settings → the handlers, their clients and the dispatcher. The only module that knows them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.dispatcher import Dispatcher
from kvmworker.dispatch.middleware import Middleware, MiddlewareChain
from kvmworker.handlers.device import DeviceHandler
from kvmworker.handlers.host import create_host_handler
from kvmworker.handlers.namespace import NamespaceHandler
from kvmworker.handlers.network import NetworkHandler
from kvmworker.handlers.storage import create_storage_handler
from kvmworker.handlers.system import ResultLookup, SystemHandler
from kvmworker.handlers.vm import create_vm_handler
from kvmworker.journal.middleware import JournalMiddleware, create_journal
from kvmworker.netplane.plane import Netplane
from kvmworker.observability.logs import CommandLogMiddleware
from kvmworker.observability.metrics import MetricsMiddleware, WorkerMetrics
from kvmworker.settings import Settings
from kvmworker.trust.middleware import create_trust


def build_registry(
    settings: Settings,
    extra_handlers: list[object] | None = None,
    results: ResultLookup | None = None,
    journal: object | None = None,
) -> HandlerRegistry:
    """Every handler of this worker. Each handler module exposes ``create_handler(settings)``."""
    registry = HandlerRegistry()
    features: dict[str, Callable[[], Any]] = {}
    for handler in [*_handler_factories(settings, features), *(extra_handlers or [])]:
        registry.add(handler)
    registry.add(SystemHandler(settings.host, registry.catalogue, features, results=results, journal=journal))
    return registry


def _handler_factories(settings: Settings, features: dict[str, Callable[[], Any]]) -> list[object]:
    """The handlers and the clients they share: one netlink pool and one libvirt connection per worker.

    The network handlers own the pool and the VM handler owns the connection (they close them);
    the host handler only borrows both.
    """
    plane = Netplane.from_settings(settings)
    features["vlan"] = plane.vlan_support
    vm = create_vm_handler(settings, features)
    host = create_host_handler(settings, features, libvirt=vm.connection, netlink=plane.pool)
    storage = create_storage_handler(settings, vm.connection)
    return [NetworkHandler(plane), NamespaceHandler(plane), DeviceHandler(plane), vm, host, storage]


def build_dispatcher(
    settings: Settings, extra_handlers: list[object] | None = None, middleware: list[Middleware] | None = None
) -> Dispatcher:
    middleware = middleware or []
    # SystemHandler.result and .status answer from the journal, when there is one.
    journal = next((mw for mw in middleware if isinstance(mw, JournalMiddleware)), None)
    return Dispatcher(
        build_registry(
            settings, extra_handlers, journal.result if journal else None, journal.store if journal else None
        ),
        MiddlewareChain(middleware),
        host=settings.host,
        max_body=settings.max_body,
    )


def build_middleware(settings: Settings) -> list[Middleware]:
    """Journal, signatures, metrics: the order here is the order of their hooks."""
    # Metrics first: it counts every message in (on_receive) and out (after_reply), whoever answers it.
    metrics = WorkerMetrics()
    journal = create_journal(settings, on_duplicate=lambda how: metrics.duplicates.labels(how).inc())
    metrics.watch_journal(journal.store.size_bytes)
    # Trust right after metrics (which must see every message in): a refused message reaches nothing else.
    return [MetricsMiddleware(metrics), create_trust(settings), CommandLogMiddleware(), journal]
