"""The subjects of ``rpc.py`` and what each row measures on them.

A ``Lab`` starts each subject the first time a row needs it (a raw responder, a ``kvmworker worker`` process
with its client, the bridge) and keeps it up until the end, so that rounds measure, never start. A row returns
one round's figures: ``p50_ms``/``p99_ms`` (sequential calls), ``per_s``, and ``cpu_us``, the CPU of the
process that answers (the worker, a raw responder, the bridge) per message, from ``/proc``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import procstat
from bridge import LOGOUT, PING, BridgeSubject, InProcessApp, RawBackedBridge
from peers import AmqpPeer, RedisPeer
from subjects import (
    AmqpConfirmPeer,
    ClientToRaw,
    KvmSubject,
    RawCallerToWorker,
    RawRedisCallerToWorker,
    RedisGuaranteesPeer,
)


@dataclass(frozen=True)
class Plan:
    amqp: str
    redis: str
    amqp_host_port: str
    calls: int  # sequential calls per latency row and round
    seconds: float  # per throughput row and round
    window: int  # in flight in the raw windowed pipeline
    worker_args: tuple[str, ...] = ()


class Lab:
    """The subjects, each started the first time a row needs it and kept up until the end."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.started: dict[str, object] = {}
        self.broken: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def get(self, name: str):
        if name in self.broken:
            raise RuntimeError(f"{name} did not start: {self.broken[name]}")
        if name not in self.started:
            try:
                self.started[name] = self._stack.enter_context(contextlib.closing(self._build(name)))
            except Exception as exc:
                self.broken[name] = str(exc)
                raise
        return self.started[name]

    def _build(self, name: str):
        p = self.plan
        builders: dict[str, Callable[[], object]] = {
            "amqp-raw": lambda: AmqpPeer(p.amqp_host_port),
            "amqp-raw-confirm": lambda: AmqpConfirmPeer(p.amqp_host_port),
            "amqp-raw-guarantees": lambda: AmqpConfirmPeer(p.amqp_host_port, confirmed=True),
            "redis-raw": lambda: RedisPeer(p.redis),
            "redis-raw-guarantees": lambda: RedisGuaranteesPeer(p.redis),
            "amqp-default": lambda: KvmSubject(p.amqp, worker_args=p.worker_args),
            "amqp-fast": lambda: KvmSubject(p.amqp, confirms=False, persistent=False, worker_args=p.worker_args),
            "redis-default": lambda: KvmSubject(p.redis, worker_args=p.worker_args),
            "client-raw": lambda: ClientToRaw(p.amqp, p.amqp_host_port),
            "raw-caller-worker": lambda: RawCallerToWorker(self.get("amqp-default"), p.amqp_host_port),
            "raw-caller-worker-redis": lambda: RawRedisCallerToWorker(self.get("redis-default"), p.redis),
            "bridge": lambda: BridgeSubject(p.amqp, self.get("amqp-default").host),
            "bridge-raw": lambda: RawBackedBridge(p.amqp, p.amqp_host_port),
            "bridge-app": InProcessApp,
        }
        return builders[name]()

    def close(self) -> None:
        self._stack.close()


# -- what a row measures (each returns the round's figures) -------------------------------------


def metered(pid: int, work: Callable[[], int]) -> dict[str, float]:
    """``work()`` returns how many messages it got answered: per second, and ``pid``'s CPU µs per message."""
    meter = procstat.CpuMeter(pid).start()
    done = work()
    cpu, wall = meter.stop()
    return {"per_s": done / wall, "cpu_us": cpu / done * 1e6}


def latency(caller, pid: int, calls: int) -> dict[str, float]:
    samples: list[float] = []

    def work() -> int:
        samples.extend(caller.latencies(calls))
        return len(samples)

    figures = metered(pid, work)
    ordered = sorted(samples)
    return figures | {"p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3}


def latency_row(subject: str) -> Callable[[Lab], dict[str, float]]:
    def measure(lab: Lab) -> dict[str, float]:
        found = lab.get(subject)
        return latency(getattr(found, "caller", found), found.pid, lab.plan.calls)

    return measure


def callers_row(subject: str, callers: int) -> Callable[[Lab], dict[str, float]]:
    def measure(lab: Lab) -> dict[str, float]:
        found: KvmSubject = lab.get(subject)
        return metered(found.pid, lambda: found.throughput(callers, lab.plan.seconds))

    return measure


def raw_window(lab: Lab) -> dict[str, float]:
    peer: AmqpPeer = lab.get("amqp-raw")
    return metered(peer.pid, lambda: peer.caller.windowed(lab.plan.window, lab.plan.seconds))


def bridge_row(connections: int, body: dict = PING, subject: str = "bridge") -> Callable[[Lab], dict[str, float]]:
    def measure(lab: Lab) -> dict[str, float]:
        bridge: BridgeSubject = lab.get(subject)
        meter = procstat.CpuMeter(bridge.pid).start()
        figures = bridge.wrk(connections, lab.plan.seconds, body)
        cpu, wall = meter.stop()
        return figures | {"cpu_us": cpu / (figures["per_s"] * wall) * 1e6}

    return measure


def bridge_over_client(lab: Lab) -> dict[str, float]:
    """``bridge-1`` with the client library's own p50 measured around it, the wrk run sandwiched between two
    halves of the calls: what the bridge adds, paired within the round rather than across rows."""
    client: KvmSubject = lab.get("amqp-default")
    before = client.latencies(lab.plan.calls // 2)
    figures = bridge_row(1)(lab)
    samples = sorted(before + client.latencies(lab.plan.calls // 2))
    client_p50 = samples[len(samples) // 2] * 1e3
    return figures | {"client_p50_ms": client_p50, "over_client_ms": figures["p50_ms"] - client_p50}


def bridge_app(lab: Lab) -> dict[str, float]:
    app: InProcessApp = lab.get("bridge-app")
    return {"cpu_us": app.cost_us(2000, 5)}


@dataclass(frozen=True)
class Row:
    name: str
    measure: Callable[[Lab], dict[str, float]]
    what: str
    quick: bool = True


ROWS = [
    Row("amqp-raw", latency_row("amqp-raw"), "raw py-amqp publish→consume→reply, 1 caller"),
    Row("amqp-default", latency_row("amqp-default"), "kvmworker, confirms + persistent, 1 caller"),
    Row(
        "amqp-raw-confirm",
        latency_row("amqp-raw-confirm"),
        "raw py-amqp, persistent both ways, reply confirmed before the ack, 1 caller",
    ),
    Row(
        "amqp-raw-guarantees",
        latency_row("amqp-raw-guarantees"),
        "raw py-amqp, as amqp-raw-confirm, the caller's channel in confirm mode (each request's confirm read, not"
        " awaited, as the client does): the default path's guarantees, 1 caller",
    ),
    Row("bridge-1", bridge_over_client, "bridge (wrk), 1 connection; the client around it"),
    Row("amqp-fast", latency_row("amqp-fast"), "kvmworker, no confirms, transient, 1 caller"),
    Row("redis-raw", latency_row("redis-raw"), "raw Redis LPUSH/BRPOP, 1 caller"),
    Row(
        "redis-raw-guarantees",
        latency_row("redis-raw-guarantees"),
        "raw redis-py, each message recorded as it is popped (kombu's unacked), reply + ack in one MULTI: the"
        " Redis default path's guarantees, 1 caller",
    ),
    Row("redis-default", latency_row("redis-default"), "kvmworker over Redis, 1 caller"),
    Row(
        "raw-caller-worker-redis",
        latency_row("raw-caller-worker-redis"),
        "raw redis-py caller (kombu's message) → kvmworker worker, 1 caller",
        quick=False,
    ),
    Row("amqp-raw-window", raw_window, "raw py-amqp, 64 in flight"),
    Row("amqp-default-64", callers_row("amqp-default", 64), "kvmworker default, 64 callers"),
    Row("bridge-64", bridge_row(64), "bridge (wrk), 64 connections"),
    Row("amqp-fast-64", callers_row("amqp-fast", 64), "kvmworker fast, 64 callers"),
    Row("redis-default-64", callers_row("redis-default", 64), "kvmworker over Redis, 64 callers", quick=False),
    Row("amqp-default-8", callers_row("amqp-default", 8), "kvmworker default, 8 callers", quick=False),
    Row("amqp-fast-8", callers_row("amqp-fast", 8), "kvmworker fast, 8 callers", quick=False),
    Row("raw-caller-worker", latency_row("raw-caller-worker"), "raw py-amqp caller → kvmworker worker", quick=False),
    Row("client-raw", latency_row("client-raw"), "kvmworker client → raw py-amqp responder", quick=False),
    Row("bridge-own-64", bridge_row(64, LOGOUT), "bridge alone (UserHandler.logout), 64 conns", quick=False),
    Row("bridge-raw-64", bridge_row(64, subject="bridge-raw"), "bridge → raw py-amqp responder, 64 conns", quick=False),
    Row("bridge-app", bridge_app, "bridge's ASGI app in-process, no socket (logout)", quick=False),
]
IDLE = "idle"  # not a row of the rounds: once, after them
BY_NAME = {row.name: row for row in ROWS}


def selected(only: str | None, quick: bool) -> tuple[list[Row], bool]:
    """The rows to run, and whether the idle window is wanted."""
    if only is None:
        return [r for r in ROWS if r.quick or not quick], True
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    return rows, any(fnmatch.fnmatchcase(IDLE, p) for p in patterns)


def measure(lab: Lab, row: Row, label: str) -> dict[str, float] | str:
    """One round of ``row``: its figures, or what went wrong (a failed round is left out of the medians)."""
    try:
        figures = row.measure(lab)
    except Exception as exc:
        print(f"{label} {row.name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return str(exc) or type(exc).__name__
    shown = "  ".join(f"{k} {v:.3f}" if v < 100 else f"{k} {v:.0f}" for k, v in sorted(figures.items()))
    print(f"{label} {row.name:20s} {shown}", file=sys.stderr, flush=True)
    return figures


def measure_idle(lab: Lab, seconds: float) -> dict[str, dict[str, float]]:
    """CPU of every worker and the bridge over one quiet window, then their memory and threads."""
    with contextlib.suppress(RuntimeError):
        lab.get("amqp-default")  # reported in the failures already
    processes = {name: s.pid for name, s in lab.started.items() if isinstance(s, KvmSubject | BridgeSubject)}
    meters = {name: procstat.CpuMeter(pid).start() for name, pid in processes.items()}
    time.sleep(seconds if meters else 0)
    figures = {}
    for name, meter in meters.items():
        cpu, wall = meter.stop()
        status = procstat.status(processes[name])
        figures[name] = {
            "idle_cpu_pct": 100 * cpu / wall,
            "rss_mb": status["VmRSS"] / 1024,
            "peak_rss_mb": status["VmHWM"] / 1024,
            "threads": status["Threads"],
        }
    return figures
