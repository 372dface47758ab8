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

Workers and the bridge log at WARNING, as the issue's own figures were measured; ``--worker-arg=--log-level
--worker-arg=INFO`` adds the worker's line per message (production's default) to its cost.

The table at the end names each target of the issue (section 2) with its figure and whether it is met.
``bench/compare.py`` runs this against two checkouts and prints them side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import targets
from lab import BY_NAME, IDLE, ROWS, Lab, Plan, Row, measure, measure_idle, selected

import kvmworker

Results = dict[str, list[dict[str, float]]]


def run_rounds(lab: Lab, rows: list[Row], rounds: int) -> tuple[Results, dict[str, list[str]]]:
    """Each row's figures per round (order reversed every other round), and what failed."""
    results: Results = {r.name: [] for r in rows}
    failures: dict[str, list[str]] = {}
    for number in range(rounds):
        for row in rows if number % 2 == 0 else reversed(rows):
            figures = measure(lab, row, f"round {number + 1}")
            if isinstance(figures, str):
                failures.setdefault(row.name, []).append(figures)
            else:
                results[row.name].append(figures)
    return results, failures


def serve(lab: Lab) -> None:
    """``--serve``: one JSON request a line on stdin, one JSON answer a line on stdout, until EOF (compare.py).

    ``{"row": NAME, "label": TEXT}`` → ``{"figures": {…}}`` or ``{"error": TEXT}``; ``{"idle": SECONDS}`` →
    ``{"idle": {…}}``; ``{"meta": true}`` → ``{"meta": {…}}``; ``{"select": {"only": …, "quick": …}}`` →
    ``{"rows": [NAME, …], "idle": BOOL}``. ``{"ready": true}`` is written first.
    """
    answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if "row" in request:
            figures = measure(lab, BY_NAME[request["row"]], request.get("label", ""))
            answer({"error": figures} if isinstance(figures, str) else {"figures": figures})
        elif "idle" in request:
            answer({"idle": measure_idle(lab, request["idle"])})
        elif "meta" in request:
            answer({"meta": describe_checkout()})
        elif "select" in request:
            rows, want_idle = selected(request["select"]["only"], request["select"]["quick"])
            answer({"rows": [r.name for r in rows], "idle": want_idle})


def answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


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


def print_rows(results: Results, failures: dict[str, list[str]]) -> None:
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
        key = next((k for k in ("p50_ms", "per_s", "cpu_us") if k in m), "cpu_us")
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
    parser.add_argument("--serve", action="store_true", help="measure rows asked for on stdin (compare.py)")
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
    lab = Lab(plan_from(args))
    if args.serve:
        try:
            serve(lab)
        finally:
            lab.close()
        return 0
    rows, want_idle = selected(args.only, args.quick)
    rounds = args.rounds or (3 if args.quick else 5)
    idle_s = args.idle or (5.0 if args.quick else 10.0)
    meta = describe_checkout() | {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg()}
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
