"""Running a worker: settings → handlers → dispatcher → a consuming worker thread, and a clean stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kvmworker.app import build_dispatcher, build_middleware
from kvmworker.dispatch.dispatcher import Dispatcher
from kvmworker.dispatch.middleware import Middleware
from kvmworker.events.wiring import attach_events, create_events
from kvmworker.observability.attach import observe_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import open_connection
from kvmworker.transport.publisher import Publisher
from kvmworker.transport.worker import Worker
from kvmworker.trust.middleware import announce_open, reply_signer

log = logging.getLogger("kvmworker.runtime")


@dataclass
class RunningWorker:
    worker: Worker
    dispatcher: Dispatcher
    thread: threading.Thread

    def stop(self, timeout: float | None = None) -> bool:
        self.worker.stop()
        stopped = self.worker.wait_stopped(timeout)
        if stopped:
            self.thread.join(timeout)  # nothing of the consumer thread outlives stop(), its last log line included
        close_handlers(self.dispatcher)
        return stopped


def build_worker(
    settings: Settings, extra_handlers: list[object] | None = None, extra_middleware: list[Middleware] | None = None
) -> tuple[Worker, Dispatcher]:
    """The worker ``kvmworker worker`` runs; tests add handlers, or middleware after the standard chain."""
    events = create_events(settings)  # before the handlers: the event sources among them share it
    middleware = [*build_middleware(settings), *(extra_middleware or [])]
    dispatcher = build_dispatcher(settings, extra_handlers, middleware, events)
    for handler in dispatcher.registry.handlers:
        _call_quietly(handler, "on_start")
    connection = open_connection(settings.broker, visibility_timeout=settings.redis_visibility_timeout)
    publisher = Publisher(open_connection(settings.broker, confirms=settings.publish_confirms))
    signer = reply_signer(dispatcher.middleware)
    if signer is None:
        announce_open(dispatcher.middleware, settings.host)  # at start, then hourly while serving
    worker = Worker(
        connection,
        publisher,
        dispatcher,
        settings.host,
        prefetch=settings.prefetch,
        workers=settings.workers,
        signer=signer,
    )
    observe_worker(settings, worker, dispatcher)
    attach_events(settings, worker, dispatcher, events)  # online now; offline and flushed when the worker stops
    return worker, dispatcher


def close_handlers(dispatcher: Dispatcher) -> None:
    for handler in dispatcher.registry.handlers:
        _call_quietly(handler, "close")


def start_worker(settings: Settings, extra_handlers: list[object] | None = None) -> RunningWorker:
    """The worker on a thread of its own (embedded mode, tests); ``stop()`` ends it cleanly."""
    worker, dispatcher = build_worker(settings, extra_handlers)
    thread = threading.Thread(target=worker.run, name="kvmworker-consumer", daemon=True)
    thread.start()
    return RunningWorker(worker, dispatcher, thread)


def _call_quietly(handler: object, hook: str) -> None:
    fn = getattr(handler, hook, None)
    if fn is None:
        return
    try:
        fn()
    except Exception:
        log.exception("%s.%s failed", type(handler).__name__, hook)
