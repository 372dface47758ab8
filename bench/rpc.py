"""Issue 15's cost targets in one run: kvmworker beside the raw floors, as ratios, met or not.

    .venv/bin/python bench/rpc.py [--quick] [--only 'amqp-*,bridge-1'] [--rounds 5] [--json FILE]

Every subject starts once and stays up: py-amqp and Redis responders (the floors), ``kvmworker worker``
processes (default = publisher confirms + persistent messages; ``fast`` = neither; over Redis), each with
its own state directory and a client in this process, and a ``kvmworker bridge`` in front of the default
worker. Then every selected row is measured once per round, rows in turn (raw beside kvmworker, the order
reversed every other round), so that whatever else loads this machine hits floor and subject alike; a
row's figure is the median of its rounds. After the rounds, every worker sits idle for ``--idle`` seconds:
its CPU over that window, then its RSS and threads. Worker CPU per message is the worker process's own CPU
(``/proc``, every thread) over a row divided by the messages it answered.

The table at the end names each target of the issue (section 2) with its figure and whether it is met.
``bench/compare.py`` runs this against two checkouts and prints them side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import procstat
import targets
from bridge import MALFORMED, PING, BridgeSubject
from peers import AmqpPeer, RedisPeer
from subjects import ClientToRaw, KvmSubject, RawCallerToWorker

import kvmworker


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
            "redis-raw": lambda: RedisPeer(p.redis),
            "amqp-default": lambda: KvmSubject(p.amqp, worker_args=p.worker_args),
            "amqp-fast": lambda: KvmSubject(p.amqp, confirms=False, persistent=False, worker_args=p.worker_args),
            "redis-default": lambda: KvmSubject(p.redis, worker_args=p.worker_args),
            "client-raw": lambda: ClientToRaw(p.amqp, p.amqp_host_port),
            "raw-caller-worker": lambda: RawCallerToWorker(self.get("amqp-default"), p.amqp_host_port),
            "bridge": lambda: BridgeSubject(p.amqp, self.get("amqp-default").host),
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


def bridge_row(connections: int, body: dict = PING, code: int = 0) -> Callable[[Lab], dict[str, float]]:
    def measure(lab: Lab) -> dict[str, float]:
        bridge: BridgeSubject = lab.get("bridge")
        meter = procstat.CpuMeter(bridge.pid).start()
        figures = bridge.wrk(connections, lab.plan.seconds, body, code)
        cpu, wall = meter.stop()
        return figures | {"cpu_us": cpu / (figures["per_s"] * wall) * 1e6}

    return measure


@dataclass(frozen=True)
class Row:
    name: str
    measure: Callable[[Lab], dict[str, float]]
    what: str
    quick: bool = True


ROWS = [
    Row("amqp-raw", latency_row("amqp-raw"), "raw py-amqp publish→consume→reply, 1 caller"),
    Row("amqp-default", latency_row("amqp-default"), "kvmworker, confirms + persistent, 1 caller"),
    Row("bridge-1", bridge_row(1), "bridge (wrk), 1 connection"),
    Row("amqp-fast", latency_row("amqp-fast"), "kvmworker, no confirms, transient, 1 caller"),
    Row("redis-raw", latency_row("redis-raw"), "raw Redis LPUSH/BRPOP, 1 caller"),
    Row("redis-default", latency_row("redis-default"), "kvmworker over Redis, 1 caller"),
    Row("amqp-raw-window", raw_window, "raw py-amqp, 64 in flight"),
    Row("amqp-default-64", callers_row("amqp-default", 64), "kvmworker default, 64 callers"),
    Row("bridge-64", bridge_row(64), "bridge (wrk), 64 connections"),
    Row("amqp-fast-64", callers_row("amqp-fast", 64), "kvmworker fast, 64 callers"),
    Row("redis-default-64", callers_row("redis-default", 64), "kvmworker over Redis, 64 callers", quick=False),
    Row("amqp-default-8", callers_row("amqp-default", 8), "kvmworker default, 8 callers", quick=False),
    Row("amqp-fast-8", callers_row("amqp-fast", 8), "kvmworker fast, 8 callers", quick=False),
    Row("raw-caller-worker", latency_row("raw-caller-worker"), "raw py-amqp caller → kvmworker worker", quick=False),
    Row("client-raw", latency_row("client-raw"), "kvmworker client → raw py-amqp responder", quick=False),
    Row("bridge-ceiling", bridge_row(64, MALFORMED, 20001), "bridge alone (20001, no broker), 64", quick=False),
]
IDLE = "idle"  # not a row of the rounds: once, after them


def selected(only: str | None, quick: bool) -> tuple[list[Row], bool]:
    """The rows to run, and whether the idle window is wanted."""
    if only is None:
        return [r for r in ROWS if r.quick or not quick], True
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    return rows, any(fnmatch.fnmatchcase(IDLE, p) for p in patterns)


def run_rounds(lab: Lab, rows: list[Row], rounds: int) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    """Each row's figures per round, and what failed (a failed round is left out of the medians)."""
    results: dict[str, list[dict[str, float]]] = {r.name: [] for r in rows}
    failures: dict[str, list[str]] = {}
    for number in range(rounds):
        for row in rows if number % 2 == 0 else reversed(rows):
            try:
                figures = row.measure(lab)
            except Exception as exc:
                failures.setdefault(row.name, []).append(str(exc))
                print(f"round {number + 1} {row.name}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            results[row.name].append(figures)
            shown = "  ".join(f"{k} {v:.3f}" if v < 100 else f"{k} {v:.0f}" for k, v in sorted(figures.items()))
            print(f"round {number + 1} {row.name:20s} {shown}", file=sys.stderr, flush=True)
    return results, failures


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


# -- the report -----------------------------------------------------------------------------------


def describe_checkout() -> dict[str, str]:
    tree = Path(kvmworker.__file__).resolve().parents[1]
    git = ["git", "-C", str(tree), "log", "-1", "--format=%h %s"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "tree": str(tree),
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "python": sys.executable,
    }


def print_rows(results: dict[str, list[dict[str, float]]], failures: dict[str, list[str]]) -> None:
    medians = targets.summary(results)
    whats = {r.name: r.what for r in ROWS}
    print(f"{'row':20s} {'what':42s} {'p50 ms':>8s} {'p99 ms':>8s} {'per s':>7s} {'CPU µs/msg':>10s}  rounds")
    for name, measured in results.items():
        m = medians.get(name, {})
        cells = [
            _cell(m.get("p50_ms"), 3),
            _cell(m.get("p99_ms"), 3),
            _cell(m.get("per_s"), 0),
            _cell(m.get("cpu_us"), 0),
        ]
        key = "p50_ms" if "p50_ms" in m else "per_s"
        span = targets.spread(measured, key)
        range_text = f"{len(measured)}: {span[0]:.3g}–{span[1]:.3g} {key}" if span else "0"
        range_text += f", {len(failures[name])} FAILED" if name in failures else ""
        print(
            f"{name:20s} {whats[name]:42s} {cells[0]:>8s} {cells[1]:>8s} {cells[2]:>7s} {cells[3]:>10s}  {range_text}"
        )


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_idle(idle: dict[str, dict[str, float]], seconds: float) -> None:
    title = f"idle {seconds:g} s"
    print(f"\n{title:20s} {'CPU % of a core':>15s} {'RSS MB':>8s} {'peak MB':>8s} {'threads':>8s}")
    for name, f in idle.items():
        print(f"{name:20s} {f['idle_cpu_pct']:15.3f} {f['rss_mb']:8.1f} {f['peak_rss_mb']:8.1f} {f['threads']:8.0f}")


def print_targets(verdicts: list[targets.Verdict]) -> None:
    print(f"\n{'target (issue 15, section 2)':44s} {'measured':>12s} {'target':>12s}  {'':7s}  basis")
    for v in verdicts:
        limit = targets.limit_text(v)
        print(
            f"{v.name:44s} {targets.shown(v.value, v.unit):>12s} {limit:>12s}  {targets.met_text(v.met):7s}  {v.basis}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the target rows only, fewer calls, shorter rounds")
    parser.add_argument("--only", help="comma-separated row names or patterns, e.g. 'amqp-*,idle'")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 3)")
    parser.add_argument("--calls", type=int, help="sequential calls per latency row and round (400, --quick 200)")
    parser.add_argument("--seconds", type=float, help="per throughput row and round (3, --quick 1.5)")
    parser.add_argument("--idle", type=float, help="seconds of the idle window (10, --quick 5)")
    parser.add_argument("--json", type=Path, help="write every round's figures and the verdicts here")
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--redis", default="redis://localhost:6379/0")
    parser.add_argument("--worker-arg", action="append", default=[], help="extra argument for every worker")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    host_port = args.amqp.split("@")[-1].split("/")[0]
    return Plan(
        amqp=args.amqp,
        redis=args.redis,
        amqp_host_port=host_port,
        calls=args.calls or (200 if args.quick else 400),
        seconds=args.seconds or (1.5 if args.quick else 3.0),
        window=64,
        worker_args=tuple(args.worker_arg),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for row in ROWS:
            print(f"{row.name:20s} {row.what}{'' if row.quick else '  (not in --quick)'}")
        print(f"{IDLE:20s} idle CPU, RSS and threads of every worker, once after the rounds")
        return 0
    rows, want_idle = selected(args.only, args.quick)
    rounds = args.rounds or (3 if args.quick else 5)
    idle_s = args.idle or (5.0 if args.quick else 10.0)
    meta = describe_checkout() | {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg()}
    lab = Lab(plan_from(args))
    try:
        results, failures = run_rounds(lab, rows, rounds)
        idle = measure_idle(lab, idle_s) if want_idle else {}
    finally:
        lab.close()
    meta |= {"load_after": os.getloadavg(), "rounds": rounds, "argv": sys.argv[1:]}
    verdicts = targets.judge(targets.summary(results), idle)
    print(f"kvmworker {meta['commit']}  ({meta['tree']})")
    print(f"{rounds} rounds; load average before {_load(meta['load_before'])}, after {_load(meta['load_after'])}\n")
    print_rows(results, failures)
    if idle:
        print_idle(idle, idle_s)
    print_targets(verdicts)
    if args.json:
        document = {"meta": meta, "rounds": results, "failures": failures, "idle": idle}
        document["verdicts"] = [asdict(v) | {"met": v.met} for v in verdicts]
        args.json.write_text(json.dumps(document, indent=1, ensure_ascii=False))
    return 0


def _load(values) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
