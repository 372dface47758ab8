"""Events in a running worker: the one function the composition root calls, ``attach_events``.

It makes the sender (to the broker, or the process's fan-out on ``memory://``), the worker's state events,
the metrics and the ``status`` summary: ``online`` now. Its owner (``Assembly.events``) closes it once the
worker has stopped (SIGTERM: after its last command): ``offline``, then what is buffered goes out (up to
``FLUSH_S`` seconds; the rest waits on disk for the next start).
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from kvmworker.events.fanout import LOCAL
from kvmworker.events.hub import Events
from kvmworker.events.metrics import EventMetrics
from kvmworker.events.model import Event
from kvmworker.events.operations import OperationEvents
from kvmworker.events.sender import BrokerTarget, LocalTarget, Sender
from kvmworker.events.state import WorkerState

log = logging.getLogger("kvmworker.events")

FLUSH_S = 5.0
FLUSH_UNREACHABLE_S = 0.5
STATUS_EVENTS = 10


def create_events(settings: Any) -> Events:
    """The hub the handlers and sources share (made before them; ``attach_events`` starts it)."""
    return Events.create(settings.host, settings.state_dir, settings.event_buffer)


class EventService:
    def __init__(self, events: Events, sender: Sender, state: WorkerState):
        self.events = events
        self.sender = sender
        self.state = state
        self._closing = threading.Lock()
        self._closed = False

    @property
    def emitter(self):
        return self.events.emitter

    def start(self) -> EventService:
        self.sender.start()
        self.state.start()
        atexit.register(self.close)
        return self

    def close(self, reason: str = "stopping") -> None:
        """``offline``, flush, stop. Idempotent: the worker's stop and the interpreter's exit both call it."""
        with self._closing:  # a second caller waits until the first has flushed
            if self._closed:
                return
            self._closed = True
            self.state.stop(reason)
            # a sender that cannot reach the broker now will not in the next seconds either: do not hold up the stop
            if not self.sender.flush(FLUSH_S if self.sender.connected.is_set() else FLUSH_UNREACHABLE_S):
                log.warning(
                    "%d event(s) not published before stopping: they wait in the state directory for the next start",
                    self.events.emitter.buffer.pending_count(),
                )
            self.sender.stop()
            self.events.emitter.buffer.close()
            # only now: a process exiting meanwhile runs this hook, which waits on the lock for the flush
            atexit.unregister(self.close)

    def summary(self) -> dict[str, Any]:
        """For ``SystemHandler.status`` (``kvmworker status``): the sequence, the buffer, the last events."""
        return events_summary(self.events.emitter.buffer, connected=self.sender.connected.is_set())


def events_summary(buffer: Any, connected: bool | None = None, last: int = STATUS_EVENTS) -> dict[str, Any]:
    return {
        "seq": buffer.next_seq() - 1,
        "buffered": buffer.pending_count(),
        "dropped": buffer.dropped(),
        "connected": connected,
        "last": [Event.from_body(body).model_dump(mode="json", exclude_none=True) for body in buffer.recent(last)],
    }


def attach_events(settings: Any, assembly: Any, events: Events | None = None) -> EventService:
    """Start a worker's events, from the parts its ``assembly`` (``kvmworker.app.Assembly``) built: the metrics
    registry, the reply signer, the pipeline's operations (the long-running commands), ``SystemHandler`` (its
    ``status`` shows them) and the ``event_users`` it names, each given the hub before ``online`` is said (so
    that their picture providers are in it). ``events``: the hub the handlers were built with. The caller keeps
    the service (``Assembly.events``) and closes it once the worker has stopped: ``offline``, then a flush."""
    events = events or create_events(settings)
    target = (
        LocalTarget(LOCAL)
        if settings.broker.startswith("memory:")
        else BrokerTarget(settings.broker, settings.host, assembly.signer)
    )
    counters: EventMetrics | None = None
    sender = Sender(events.emitter.buffer, target, on_published=lambda seq: counters and counters.published.inc())
    state = WorkerState(
        events.emitter,
        events.pictures,
        settings.resync_interval,
        on_sync=lambda reason: counters and counters.syncs.inc(),
    )
    counters = EventMetrics(assembly.metrics.registry, events.emitter, sender.connected.is_set)
    events.emitter.add_listener(sender.wake)
    assembly.pipeline.operations.observe(OperationEvents(events.emitter))  # operation.progress / operation.done
    service = EventService(events, sender, state)
    assembly.system.events_summary = service.summary
    for user in assembly.event_users:
        user.use_events(events)
    service.start()
    return service
