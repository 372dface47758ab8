"""Events on ``/metrics``: emitted (by source and kind), published, dropped, buffered, syncs, the last seq."""

from __future__ import annotations

from prometheus_client.metrics import Counter, Gauge
from prometheus_client.registry import CollectorRegistry

from kvmworker.events.emitter import Emitter
from kvmworker.events.model import Event


class EventMetrics:
    def __init__(self, registry: CollectorRegistry, emitter: Emitter, connected=lambda: False):
        r = registry
        buffer = emitter.buffer
        self.emitted = Counter(
            "kvmworker_events_emitted", "Events emitted, by source and kind.", ["source", "kind"], registry=r
        )
        self.published = Counter("kvmworker_events_published", "Events the broker confirmed.", registry=r)
        self.dropped = Counter(
            "kvmworker_events_dropped", "Events dropped from the full buffer (oldest first).", registry=r
        )
        self.syncs = Counter("kvmworker_events_syncs", "worker.state sync events, periodic or requested.", registry=r)
        Gauge("kvmworker_events_buffered", "Events waiting on disk to be published.", registry=r).set_function(
            lambda: float(buffer.pending_count())
        )
        Gauge("kvmworker_events_seq", "The seq of the last event emitted.", registry=r).set_function(
            lambda: float(buffer.next_seq() - 1)
        )
        Gauge("kvmworker_events_connected", "1 while the event sender reaches the broker.", registry=r).set_function(
            lambda: float(bool(connected()))
        )
        emitter.add_listener(self._on_emit)

    def _on_emit(self, event: Event, dropped: int) -> None:
        self.emitted.labels(event.source, event.kind).inc()
        if dropped:
            self.dropped.inc(dropped)
