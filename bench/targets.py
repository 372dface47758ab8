"""Issue 15's targets, judged from one run's results: medians of rounds, ratios to floors measured alongside.

A run's results (``rpc.py --json``) are ``{"rounds": {row: [{metric: value}, …]}, "idle": {subject: {…}}}``;
``summary`` takes the median of each metric over the rounds, ``judge`` turns that into the target table.
``compare.py`` pools the rounds of several runs of one checkout and calls the same two functions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

Summary = dict[str, dict[str, float]]


def summary(rounds: dict[str, list[dict[str, float]]]) -> Summary:
    """The median over the rounds of each row's metrics (NaN-free; a metric missing everywhere is left out)."""
    result: Summary = {}
    for row, measured in rounds.items():
        names = {name for one in measured for name in one}
        values = {name: [one[name] for one in measured if not math.isnan(one.get(name, math.nan))] for name in names}
        result[row] = {name: statistics.median(found) for name, found in values.items() if found}
    return result


def spread(measured: list[dict[str, float]], metric: str) -> tuple[float, float] | None:
    found = [one[metric] for one in measured if not math.isnan(one.get(metric, math.nan))]
    return (min(found), max(found)) if found else None


@dataclass(frozen=True)
class Target:
    name: str
    unit: str  # how ``value`` reads: "×", "%", "µs", "ms", "/s", "MB", ""
    limit: float | None  # None: shown, not judged
    at_most: bool  # the value must be ≤ limit (else ≥)
    value: Callable[[Summary, dict], float | None]
    basis: Callable[[Summary, dict], str] = lambda s, i: ""


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float | None
    unit: str
    limit: float | None
    at_most: bool
    basis: str

    @property
    def met(self) -> bool | None:
        if self.value is None or self.limit is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


def metric(s: Summary, row: str, name: str) -> float | None:
    return s.get(row, {}).get(name)


def ratio(s: Summary, row: str, floor: str, name: str = "p50_ms") -> float | None:
    top, bottom = metric(s, row, name), metric(s, floor, name)
    return top / bottom if top is not None and bottom else None


def idle(i: dict, name: str, subject: str = "amqp-default") -> float | None:
    return i.get(subject, {}).get(name)


def _ms(s: Summary, row: str) -> str:
    value = metric(s, row, "p50_ms")
    return f"{row} p50 {value:.3f} ms" if value is not None else f"{row}: not measured"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _rate(s: Summary, row: str) -> str:
    value = metric(s, row, "per_s")
    return f"{row} {value:.0f}/s" if value is not None else f"{row}: not measured"


TARGETS = [
    Target("raw py-amqp loop p50 (the floor)", "ms", None, True, lambda s, i: metric(s, "amqp-raw", "p50_ms")),
    Target(
        "default (confirms+persistent) p50 / raw",
        "×",
        1.6,
        True,
        lambda s, i: ratio(s, "amqp-default", "amqp-raw"),
        lambda s, i: _ms(s, "amqp-default"),
    ),
    Target(
        "default p50 / raw with the same guarantees (the broker's floor for them)",
        "×",
        None,
        True,
        lambda s, i: ratio(s, "amqp-default", "amqp-raw-guarantees"),
        lambda s, i: _ms(s, "amqp-raw-guarantees"),
    ),
    Target(
        "no confirms, transient p50 / raw",
        "×",
        1.3,
        True,
        lambda s, i: ratio(s, "amqp-fast", "amqp-raw"),
        lambda s, i: _ms(s, "amqp-fast"),
    ),
    Target(
        "over Redis p50 / raw Redis LPUSH/BRPOP",
        "×",
        1.5,
        True,
        lambda s, i: ratio(s, "redis-default", "redis-raw"),
        lambda s, i: f"{_ms(s, 'redis-default')}; {_ms(s, 'redis-raw')}",
    ),
    Target(
        "over Redis p50 / raw Redis with the same guarantees (recorded as popped, reply + ack in one MULTI)",
        "×",
        None,
        True,
        lambda s, i: ratio(s, "redis-default", "redis-raw-guarantees"),
        lambda s, i: _ms(s, "redis-raw-guarantees"),
    ),
    Target(
        "64 callers / raw window of 64 (throughput)",
        "%",
        50,
        False,
        lambda s, i: None if (r := ratio(s, "amqp-default-64", "amqp-raw-window", "per_s")) is None else 100 * r,
        lambda s, i: f"{_rate(s, 'amqp-default-64')}; {_rate(s, 'amqp-raw-window')}",
    ),
    Target(
        "worker CPU per message (64 callers)",
        "µs",
        150,
        True,
        lambda s, i: metric(s, "amqp-default-64", "cpu_us"),
        lambda s, i: f"raw responder {v:.0f} µs" if (v := metric(s, "amqp-raw-window", "cpu_us")) else "",
    ),
    Target("worker idle CPU", "%", 0.1, True, lambda s, i: idle(i, "idle_cpu_pct")),
    Target("worker RSS after the run", "MB", 60, True, lambda s, i: idle(i, "rss_mb")),
    Target("worker threads", "", None, True, lambda s, i: idle(i, "threads")),
    Target(
        "bridge p50 over the client (1 conn)",
        "ms",
        0.3,
        True,
        lambda s, i: metric(s, "bridge-1", "over_client_ms"),
        lambda s, i: f"{_ms(s, 'bridge-1')}; client around it p50 {_fmt(metric(s, 'bridge-1', 'client_p50_ms'))} ms",
    ),
    Target("bridge, 64 keep-alive connections", "/s", 3000, False, lambda s, i: metric(s, "bridge-64", "per_s")),
]


def judge(s: Summary, idle_figures: dict) -> list[Verdict]:
    return [
        Verdict(t.name, t.value(s, idle_figures), t.unit, t.limit, t.at_most, t.basis(s, idle_figures)) for t in TARGETS
    ]


def shown(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    digits = 3 if unit == "ms" else 2 if unit in ("×", "%") else 0
    return f"{value:.{digits}f} {unit}".rstrip()


def limit_text(verdict: Verdict) -> str:
    if verdict.limit is None:
        return ""
    return ("≤ " if verdict.at_most else "≥ ") + shown(verdict.limit, verdict.unit)


def met_text(met: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: ""}[met]
