"""The composition root: settings → everything one worker is made of. The only module that knows them all.

``assemble`` builds each part once and keeps the reference in an ``Assembly``; nothing is found again
later by searching. The handlers borrow the clients they share (one netlink pool and store, one libvirt
connection); the Assembly owns them and closes them, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.executor import Executor
from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.operations import Operations
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events import Events
from kvmworker.events.hub import EventUser
from kvmworker.handlers.device import DeviceHandler
from kvmworker.handlers.host import create_host_handler
from kvmworker.handlers.namespace import NamespaceHandler
from kvmworker.handlers.network import NetworkHandler
from kvmworker.handlers.storage import create_storage_handler
from kvmworker.handlers.system import SystemHandler
from kvmworker.handlers.vm import VmHandler, create_vm_handler
from kvmworker.inventory.cpu import CpuInventory
from kvmworker.journal.middleware import JournalMiddleware, create_journal
from kvmworker.memory import HeapTrimmer, limit_sqlite_heap, start_trimming
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.watch import start_network_watch
from kvmworker.observability.logs import CommandLogMiddleware
from kvmworker.observability.metrics import MetricsMiddleware, WorkerMetrics
from kvmworker.settings import Settings
from kvmworker.trust.middleware import TrustMiddleware, create_trust
from kvmworker.trust.signing import WorkerKeys
from kvmworker.virt.connection import LibvirtConnection

if TYPE_CHECKING:
    from kvmworker.events.wiring import EventService
    from kvmworker.observability.server import HealthServer

log = logging.getLogger("kvmworker.app")


@dataclass
class Assembly:
    settings: Settings
    netplane: Netplane
    libvirt: LibvirtConnection
    network: NetworkHandler
    vm: VmHandler
    registry: HandlerRegistry
    system: SystemHandler
    metrics: WorkerMetrics
    trust: TrustMiddleware
    journal: JournalMiddleware
    pipeline: Pipeline
    event_users: tuple[EventUser, ...] = ()
    """Given the worker's events hub when it publishes events (``attach_events``): ``vm``, and what tests add."""
    events: EventService | None = None
    """Its events, once attached (``runtime.build_worker``): ``offline`` and flushed first in ``close``."""
    health: HealthServer | None = None
    """The health port, when one is configured: closed with the rest."""
    trimmer: HeapTrimmer | None = None
    """Gives the heap's free pages back after each burst (kvmworker.memory), from ``start()`` on."""

    @property
    def signer(self) -> WorkerKeys | None:
        """The worker's keys: they verify commands (the guard) and sign replies (the pipeline)."""
        return self.trust.signer

    def libvirt_probe(self) -> dict[str, Any]:
        """libvirt's versions when it answers; raises when it does not (the metrics ask at each scrape)."""
        return self.libvirt.version()

    def start(self) -> None:
        """Before consuming: put back the networks the kernel lost (after a reboot); from now on SQLite's caches
        share one bound and the heap is trimmed after each burst (kvmworker.memory)."""
        limit_sqlite_heap()
        self.trimmer = self.trimmer or start_trimming()
        try:
            self.network.on_start()
        except Exception:
            log.exception("restoring the remembered networks failed")
        try:  # before consuming: a redelivered migrate of a killed worker gets the settled answer
            self.vm.recover_migrations(self.journal.store)
        except Exception:
            log.exception("settling the migrations a stopped worker left failed")

    def close(self) -> None:
        """Once the worker has stopped: its events (``offline``, then what is buffered goes out) and the health
        port, then what the handlers borrowed, then the journal."""
        first = [part.close for part in (self.events,) if part is not None]
        first += [part.stop for part in (self.health, self.trimmer) if part is not None]
        for close in (*first, self.vm.close, self.netplane.close, self.libvirt.close, self.journal.store.close):
            try:
                close()
            except Exception:
                log.exception("closing %s failed", close.__qualname__)


def assemble(
    settings: Settings,
    *,
    extra_handlers: Iterable[object] = (),
    extra_middleware: Iterable[Middleware[Any]] = (),
    executor: Executor | None = None,
    events: Events | None = None,
    event_users: Iterable[EventUser] = (),
) -> Assembly:
    """One worker's parts. Tests add handlers, or middleware after the standard chain; ``executor`` is the
    pool commands run on (none: each runs on the thread that received it); ``events`` the worker's events, when
    it publishes them (the netlink watch starts here, before ``start()`` restores networks, so that is told);
    ``event_users`` what tests add to the parts given that hub (``VmHandler`` is always one)."""
    metrics = WorkerMetrics()
    journal = create_journal(settings, on_duplicate=lambda how: metrics.duplicates.labels(how).inc())
    metrics.watch_journal(journal.store.size_bytes)
    trust = create_trust(settings)
    netplane = Netplane.from_settings(settings)
    if events is not None:
        start_network_watch(netplane, events)  # stopped by netplane.close
    libvirt = LibvirtConnection(settings.libvirt_uri)
    network, vm, handlers = _handlers(settings, netplane, libvirt)
    operations = Operations()  # the pipeline feeds it; SystemHandler answers operations, cancel and result from it
    registry, system = _registry(
        settings, [*handlers, *extra_handlers], _features(netplane, libvirt), journal, operations
    )
    # Metrics first: they count every message in (on_receive) and out (after_reply), whoever answers it.
    # Trust right after (it must see every message before anything else does): a refused one reaches nothing more.
    middleware = [MetricsMiddleware(metrics), trust, CommandLogMiddleware(), journal, *extra_middleware]
    pipeline = Pipeline(
        registry,
        middleware,
        host=settings.host,
        max_body=settings.max_body,
        signer=trust.signer,
        executor=executor,
        operations=operations,
    )
    users = (vm, *event_users)
    return Assembly(
        settings, netplane, libvirt, network, vm, registry, system, metrics, trust, journal, pipeline, users
    )


def build_registry(settings: Settings) -> HandlerRegistry:
    """Every command of a worker with these settings, for listing them (``kvmworker schema``, the bridge).

    No command runs and nothing connects here: the clients connect on first use.
    """
    netplane = Netplane.from_settings(settings)
    libvirt = LibvirtConnection(settings.libvirt_uri)
    _, _, handlers = _handlers(settings, netplane, libvirt)
    return _registry(settings, handlers, _features(netplane, libvirt), None)[0]


def _handlers(
    settings: Settings, netplane: Netplane, libvirt: LibvirtConnection
) -> tuple[NetworkHandler, VmHandler, list[object]]:
    """The standard handlers, sharing one netlink pool and store and one libvirt connection (they close none)."""
    network = NetworkHandler(netplane)
    vm = create_vm_handler(settings, libvirt=libvirt)
    host = create_host_handler(settings, libvirt=libvirt, netlink=netplane.pool)
    storage = create_storage_handler(settings, libvirt)
    return network, vm, [network, NamespaceHandler(netplane), DeviceHandler(netplane), vm, host, storage]


def _features(netplane: Netplane, libvirt: LibvirtConnection) -> dict[str, Callable[[], Any]]:
    """What ``SystemHandler.capabilities`` reports, each asked when it is asked."""
    return {"vlan": netplane.vlan_support, "libvirt": libvirt.version, "kvm": CpuInventory().kvm_support}


def _registry(
    settings: Settings,
    handlers: list[object],
    features: Mapping[str, Callable[[], Any]],
    journal: JournalMiddleware | None,
    operations: Operations | None = None,
) -> tuple[HandlerRegistry, SystemHandler]:
    registry = HandlerRegistry(handlers)
    # SystemHandler.result and .status answer from the journal, when there is one.
    system = SystemHandler(
        settings.host,
        registry.catalogue,
        features,
        results=journal.result if journal else None,
        journal=journal.store if journal else None,
        operations=operations,
    )
    registry.add(system)
    return registry, system
