"""Wiring: settings → the handlers, their clients and the dispatcher. The only module that knows them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.dispatcher import Dispatcher
from kvmworker.dispatch.middleware import Middleware, MiddlewareChain
from kvmworker.handlers.host import create_host_handler
from kvmworker.handlers.system import SystemHandler
from kvmworker.handlers.vm import create_vm_handler
from kvmworker.settings import Settings


def build_registry(settings: Settings, extra_handlers: list[object] | None = None) -> HandlerRegistry:
    """Every handler of this worker. Each handler module exposes ``create_handler(settings)``."""
    registry = HandlerRegistry()
    features: dict[str, Callable[[], Any]] = {}
    for handler in [*_handler_factories(settings, features), *(extra_handlers or [])]:
        registry.add(handler)
    registry.add(SystemHandler(settings.host, registry.catalogue, features))
    return registry


def _handler_factories(settings: Settings, features: dict[str, Callable[[], Any]]) -> list[object]:
    # Each handler issue adds its factory here; a factory may register kernel/libvirt feature probes.
    handlers: list[object] = []
    handlers.append(create_vm_handler(settings, features))
    handlers.append(create_host_handler(settings, features))
    return handlers


def build_dispatcher(
    settings: Settings, extra_handlers: list[object] | None = None, middleware: list[Middleware] | None = None
) -> Dispatcher:
    return Dispatcher(
        build_registry(settings, extra_handlers),
        MiddlewareChain(middleware or []),
        host=settings.host,
        max_body=settings.max_body,
    )


def build_middleware(settings: Settings) -> list[Middleware]:
    """Journal, signatures, metrics: the order here is the order of their hooks."""
    return []
