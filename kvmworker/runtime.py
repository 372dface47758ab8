"""Running a worker: settings → its assembly → a consuming worker thread, and a clean stop."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kvmworker.app import Assembly, assemble
from kvmworker.dispatch.executor import KeyedExecutor
from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events.hub import EventUser
from kvmworker.events.wiring import attach_events, create_events
from kvmworker.observability.attach import observe_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import open_connection
from kvmworker.transport.worker import Worker


@dataclass
class RunningWorker:
    worker: Worker
    assembly: Assembly
    thread: threading.Thread

    @property
    def pipeline(self) -> Pipeline:
        return self.assembly.pipeline

    def stop(self, timeout: float | None = None) -> bool:
        self.worker.stop()
        stopped = self.worker.wait_stopped(timeout)
        if stopped:
            self.thread.join(timeout)  # nothing of the consumer thread outlives stop(), its last log line included
        self.assembly.close()
        return stopped


def build_worker(
    settings: Settings,
    extra_handlers: Iterable[object] = (),
    extra_middleware: Iterable[Middleware[Any]] = (),
    event_users: Iterable[EventUser] = (),
) -> tuple[Worker, Assembly]:
    """The worker ``kvmworker worker`` runs; tests add handlers (and name those that use events), or middleware
    after the standard chain."""
    events = create_events(settings)  # before the handlers: the event sources among them share it
    assembly = assemble(
        settings,
        extra_handlers=extra_handlers,
        extra_middleware=extra_middleware,
        executor=KeyedExecutor(settings.workers),
        events=events,
        event_users=event_users,
    )
    assembly.start()
    assembly.trust.warn_if_open()  # RUNNING OPEN at start, then hourly while serving
    # one connection consumes and answers (see transport/worker.py): confirms are its transport option
    connection = open_connection(
        settings.broker, confirms=settings.publish_confirms, visibility_timeout=settings.redis_visibility_timeout
    )
    worker = Worker(connection, assembly.pipeline, settings.host, prefetch=settings.prefetch)
    assembly.health = observe_worker(settings, worker, assembly.metrics, assembly.libvirt_probe, assembly.vm.all_stats)
    assembly.events = attach_events(settings, assembly, events)  # online now; offline and flushed by assembly.close
    return worker, assembly


def start_worker(
    settings: Settings, extra_handlers: Iterable[object] = (), event_users: Iterable[EventUser] = ()
) -> RunningWorker:
    """The worker on a thread of its own (embedded mode, tests); ``stop()`` ends it cleanly."""
    worker, assembly = build_worker(settings, extra_handlers, event_users=event_users)
    thread = threading.Thread(target=worker.run, name="kvmworker-consumer", daemon=True)
    thread.start()
    return RunningWorker(worker, assembly, thread)
