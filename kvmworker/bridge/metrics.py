"""``/metrics``: the bridge's requests, latency, requests in flight and logins, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kvmworker.protocol.envelope import Envelope, Reply

OTHER = "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class BridgeMetrics:
    def __init__(self, known_commands: Callable[[], Iterable[tuple[str, str]]]):
        self.registry = CollectorRegistry()
        self._known_commands = known_commands
        self._known: set[tuple[str, str]] | None = None
        self.requests = Counter(
            "kvmworker_bridge_requests",
            "Requests answered, by handler, command and reply code.",
            ["handler", "command", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kvmworker_bridge_request_seconds", "POST to reply.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge("kvmworker_bridge_in_flight", "Requests awaiting a reply.", registry=self.registry)
        # counted by the event loop's one thread, read when scraped: no lock taken per request
        self.in_flight_now = 0
        self.in_flight.set_function(lambda: self.in_flight_now)
        self._counters: dict[tuple[str, str, int], Counter] = {}

    def observe(self, envelope: Envelope | None, reply: Reply, seconds: float) -> None:
        key = (*self._labels(envelope), reply.code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(key[0], key[1], str(reply.code))
        counter.inc()
        self.latency.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _labels(self, envelope: Envelope | None) -> tuple[str, str]:
        """Callers choose handler and command names: only known ones become labels (bounded cardinality)."""
        if envelope is None:
            return OTHER, OTHER
        if self._known is None:
            self._known = set(self._known_commands())
        pair = (envelope.handler, envelope.command)
        return pair if pair in self._known else (OTHER, OTHER)
