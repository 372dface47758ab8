"""Running a worker: settings → handlers → pipeline → a consuming worker thread, and a clean stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kvmworker.app import build_middleware, build_pipeline
from kvmworker.dispatch.executor import KeyedExecutor
from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events.wiring import attach_events, create_events
from kvmworker.observability.attach import observe_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import open_connection
from kvmworker.transport.publisher import Publisher
from kvmworker.transport.worker import Worker
from kvmworker.trust.middleware import TrustMiddleware, warn_open

log = logging.getLogger("kvmworker.runtime")


@dataclass
class RunningWorker:
    worker: Worker
    pipeline: Pipeline
    thread: threading.Thread

    def stop(self, timeout: float | None = None) -> bool:
        self.worker.stop()
        stopped = self.worker.wait_stopped(timeout)
        if stopped:
            self.thread.join(timeout)  # nothing of the consumer thread outlives stop(), its last log line included
        close_handlers(self.pipeline)
        return stopped


def build_worker(
    settings: Settings, extra_handlers: list[object] | None = None, extra_middleware: list[Middleware] | None = None
) -> tuple[Worker, Pipeline]:
    """The worker ``kvmworker worker`` runs; tests add handlers, or middleware after the standard chain."""
    events = create_events(settings)  # before the handlers: the event sources among them share it
    middleware = [*build_middleware(settings), *(extra_middleware or [])]
    pipeline = build_pipeline(settings, extra_handlers, middleware, executor=KeyedExecutor(settings.workers))
    for handler in pipeline.registry.handlers:
        _call_quietly(handler, "on_start")
    connection = open_connection(settings.broker, visibility_timeout=settings.redis_visibility_timeout)
    publisher = Publisher(open_connection(settings.broker, confirms=settings.publish_confirms))
    trust = next((mw for mw in middleware if isinstance(mw, TrustMiddleware)), None)
    if trust is None:
        warn_open(settings.host)
    else:
        trust.warn_if_open()  # at start, then hourly while serving
    worker = Worker(connection, publisher, pipeline, settings.host, prefetch=settings.prefetch)
    observe_worker(settings, worker, pipeline)
    attach_events(settings, worker, pipeline, events)  # online now; offline and flushed when the worker stops
    return worker, pipeline


def close_handlers(pipeline: Pipeline) -> None:
    for handler in pipeline.registry.handlers:
        _call_quietly(handler, "close")


def start_worker(settings: Settings, extra_handlers: list[object] | None = None) -> RunningWorker:
    """The worker on a thread of its own (embedded mode, tests); ``stop()`` ends it cleanly."""
    worker, pipeline = build_worker(settings, extra_handlers)
    thread = threading.Thread(target=worker.run, name="kvmworker-consumer", daemon=True)
    thread.start()
    return RunningWorker(worker, pipeline, thread)


def _call_quietly(handler: object, hook: str) -> None:
    fn = getattr(handler, hook, None)
    if fn is None:
        return
    try:
        fn()
    except Exception:
        log.exception("%s.%s failed", type(handler).__name__, hook)
