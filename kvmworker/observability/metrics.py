"""Prometheus metrics of one worker, in a registry of its own (no process-wide default registry)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics import Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

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
        # kvmworker_commands, kvmworker_command_duration_seconds, kvmworker_commands_in_flight
        self.commands = CommandTally()
        r.register(self.commands)
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


class CommandTally(Collector):
    """The per-message metrics, counted in plain numbers under one lock per message and turned into Prometheus
    families at each scrape: as prometheus_client's Counter, Histogram and Gauge expose them (same names, labels,
    ``le`` buckets, ``_created``), at a fifth of their cost (they take a lock per number: six per message)."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS):
        self._bounds = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._received = 0
        self._answered = 0
        self._counts: dict[tuple[str, str, int], list[float]] = {}  # [count, created]
        self._timed: dict[tuple[str, str], _Timed] = {}

    def received(self) -> None:
        with self._lock:
            self._received += 1

    def answered(self, handler: str, command: str, code: int, duration: float) -> None:
        bucket = bisect_left(self._bounds, duration)  # the first bound ≥ duration (``le``); past the last: +Inf
        with self._lock:
            self._answered += 1
            counted = self._counts.get((handler, command, code))
            if counted is None:
                counted = self._counts[handler, command, code] = [0, time.time()]
            counted[0] += 1
            timed = self._timed.get((handler, command))
            if timed is None:
                timed = self._timed[handler, command] = _Timed(len(self._bounds) + 1)
            timed.buckets[bucket] += 1
            timed.sum += duration

    def in_flight(self) -> int:
        with self._lock:
            return self._received - self._answered

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = {key: tuple(value) for key, value in self._counts.items()}
            timed = {key: (list(t.buckets), t.sum, t.created) for key, t in self._timed.items()}
            in_flight = self._received - self._answered
        commands = CounterMetricFamily(
            "kvmworker_commands", "Commands answered, by handler, command and reply code.",
            labels=["handler", "command", "code"],
        )  # fmt: skip
        with_created = getattr(prometheus_metrics, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES
        for (handler, command, code), (count, created) in counts.items():
            commands.add_metric([handler, command, str(code)], count, created=created if with_created else None)
        yield commands
        duration = HistogramMetricFamily(
            "kvmworker_command_duration_seconds", "From receipt to reply, by handler and command.",
            labels=["handler", "command"],
        )  # fmt: skip
        names = [floatToGoString(b) for b in (*self._bounds, INF)]
        for (handler, command), (buckets, total, created) in timed.items():
            cumulative, running = [], 0
            for name, n in zip(names, buckets, strict=True):
                running += n
                cumulative.append((name, running))
            duration.add_metric([handler, command], cumulative, total)
            if with_created:
                labels = {"handler": handler, "command": command}
                duration.samples.append(Sample(duration.name + "_created", labels, created))
        yield duration
        yield GaugeMetricFamily("kvmworker_commands_in_flight", "Messages received and not yet answered.", in_flight)


class _Timed:
    __slots__ = ("buckets", "created", "sum")

    def __init__(self, size: int):
        self.buckets = [0] * size
        self.sum = 0.0
        self.created = time.time()


class MetricsMiddleware(Middleware[None]):
    """First in the chain, so every received message is counted in and out exactly once."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics
        self._tally = metrics.commands

    def on_receive(self, msg: InFlight) -> None:
        self._tally.received()
        if msg.delivery.redelivered:
            self.metrics.redelivered.inc()
        return None

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        handler, command = command_labels(msg, reply)
        self._tally.answered(handler, command, reply.code, duration)


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
