"""Prometheus metrics of one worker, in a registry of its own (no process-wide default registry)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply

PROBE_TIMEOUT_S = 2.0
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Names a caller made up must not become label values: one bogus handler per message would grow
# the series without bound.
UNROUTABLE = frozenset({Code.INVALID_REQUEST, Code.UNKNOWN_HANDLER, Code.UNKNOWN_COMMAND})


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.commands = Counter(
            "kvmworker_commands", "Commands answered, by handler, command and reply code.",
            ["handler", "command", "code"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "kvmworker_command_duration_seconds", "From receipt to reply, by handler and command.",
            ["handler", "command"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("kvmworker_commands_in_flight", "Messages received and not yet answered.", registry=r)
        self.redelivered = Counter("kvmworker_redelivered", "Messages the broker delivered again.", registry=r)
        self.duplicates = Counter(
            "kvmworker_duplicates", "Duplicate msg_ids answered without running again, by how.", ["how"], registry=r
        )
        self.broker_connected = Gauge("kvmworker_broker_connected", "1 while consuming from the broker.", registry=r)
        self.journal_bytes = Gauge("kvmworker_journal_bytes", "Size of the journal file and its WAL.", registry=r)

    def watch_broker(self, is_connected: Callable[[], bool]) -> None:
        self.broker_connected.set_function(lambda: float(is_connected()))

    def watch_journal(self, size_bytes: Callable[[], int]) -> None:
        self.journal_bytes.set_function(lambda: float(size_bytes()))

    def watch_libvirt(self, probe: Callable[[], Any], timeout: float = PROBE_TIMEOUT_S) -> None:
        """``probe`` is the ``libvirt`` feature probe: a dict with ``available``, asked at each scrape."""
        gauge = Gauge("kvmworker_libvirt_connected", "1 while libvirtd answers.", registry=self.registry)
        bounded = BoundedProbe(lambda: _available(probe), timeout)
        gauge.set_function(lambda: float(bounded()))


class BoundedProbe:
    """A probe that answers within ``timeout`` or counts as down, so a hung libvirtd cannot hang a scrape.

    At most one call is in flight: while an earlier one still hangs, the answer is ``False`` at once.
    """

    def __init__(self, probe: Callable[[], bool], timeout: float):
        self._probe = probe
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending: Future | None = None

    def __call__(self) -> bool:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = Future()
                threading.Thread(target=self._run, args=(self._pending,), name="kvmworker-probe", daemon=True).start()
            pending = self._pending
        try:
            return pending.result(self._timeout)
        except FutureTimeout:
            return False

    def _run(self, pending: Future) -> None:
        pending.set_result(self._probe())


class MetricsMiddleware(Middleware[None]):
    """First in the chain, so every received message is counted in and out exactly once."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics
        # Each series' child, found once: ``labels()`` costs more than the count itself. Bounded like the series.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def on_receive(self, msg: InFlight) -> None:
        self.metrics.in_flight.inc()
        if msg.delivery.redelivered:
            self.metrics.redelivered.inc()
        return None

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        self.metrics.in_flight.dec()
        handler, command = command_labels(msg, reply)
        counted = self._counted.get((handler, command, reply.code))
        if counted is None:
            counted = self._counted[handler, command, reply.code] = self.metrics.commands.labels(
                handler, command, str(reply.code)
            )
        counted.inc()
        timed = self._timed.get((handler, command))
        if timed is None:
            timed = self._timed[handler, command] = self.metrics.duration.labels(handler, command)
        timed.observe(duration)


def command_labels(msg: InFlight, reply: Reply) -> tuple[str, str]:
    envelope = msg.envelope
    if envelope is None or reply.code in UNROUTABLE:
        return "unknown", "unknown"
    return envelope.handler, envelope.command


def _available(probe: Callable[[], Any]) -> bool:
    """The probe's own failure is an answer too: not available."""
    try:
        value = probe()
    except Exception:
        return False
    return bool(value.get("available")) if isinstance(value, dict) else bool(value)
