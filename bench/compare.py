"""Before and after, side by side, in one run: the rows of ``bench/rpc.py`` against two checkouts, interleaved.

    python3 bench/compare.py --before /work/main --after /work/wt/x [--quick] [--only …] [--rounds 5] [--json FILE]

For latency and CPU ratios on a loaded, shared machine use ``bench/interleave.py`` instead: here a row's rounds
run one after the other, so the load moves between the sides (identical code has read 0.67–1.63×); there every
subject answers short batches in turns, many rounds, and identical code reads within a few percent of 1.0.

Each checkout runs with its own Python: ``DIR/.venv/bin/python`` when there is one, else this Python
(``--before-python`` / ``--after-python`` to choose), always with ``PYTHONPATH=DIR`` so that a plain source
tree (``git archive``) works with another checkout's venv; a side whose ``kvmworker`` does not import from
DIR is refused. Each side is one ``rpc.py --serve`` process (the
``rpc.py`` next to this file, so both sides run the same bench) with its own workers, bridge and
responders, all started once. Then, round by round and row by row, each side measures the row in turn
(the side that goes first alternates), so that whatever else loads this shared machine hits both alike;
the side not measuring sits idle. Last, both sides' idle window at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import targets

RPC = Path(__file__).resolve().with_name("rpc.py")
RPC_FLAGS = ("--amqp", "--redis", "--calls", "--seconds", "--worker-arg")


class Side:
    """One checkout's ``rpc.py --serve`` and what it measured."""

    def __init__(self, label: str, tree: str, python: str | None, rpc_args: list[str]):
        self.label, self.tree = label, Path(tree).resolve()
        python, env = interpreter(self.tree, python)
        check_imports_from(self.tree, python, env, label)
        argv = [python, str(RPC), "--serve", *rpc_args]
        self.process = subprocess.Popen(
            argv, env=env, cwd=tempfile.gettempdir(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ask({})  # the ready line
        self.meta = self.ask({"meta": True})["meta"]
        self.rounds: dict[str, list[dict[str, float]]] = {}
        self.failures: dict[str, list[str]] = {}
        self.idle: dict[str, dict[str, float]] = {}

    def ask(self, request: dict) -> dict:
        if request:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"{self.label}: rpc.py --serve ended (see its output above)")
        return json.loads(line)

    def measure(self, row: str, label: str) -> None:
        found = self.ask({"row": row, "label": f"{self.label:6s} {label}"})
        if "error" in found:
            self.failures.setdefault(row, []).append(found["error"])
        else:
            self.rounds.setdefault(row, []).append(found["figures"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def interpreter(tree: Path, python: str | None) -> tuple[str, dict[str, str]]:
    """The tree's venv (or ``python``, or this one), with the tree first on ``PYTHONPATH`` whichever it is."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    venv = tree / ".venv" / "bin" / "python"
    return python or (str(venv) if venv.exists() else sys.executable), env


def check_imports_from(tree: Path, python: str, env: dict[str, str], label: str) -> None:
    argv = [python, "-c", "import kvmworker; print(kvmworker.__file__)"]
    found = subprocess.run(argv, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).resolve().is_relative_to(tree):
        sys.exit(f"{label}: {python} imports kvmworker from {found.stdout.strip()}, not from {tree}")


def run(before: Side, after: Side, rows: list[str], rounds: int, idle_s: float | None) -> None:
    for number in range(rounds):
        ordered = rows if number % 2 == 0 else list(reversed(rows))
        for index, row in enumerate(ordered):
            pair = (before, after) if (number + index) % 2 == 0 else (after, before)
            for side in pair:
                side.measure(row, f"round {number + 1}")
    if idle_s:
        for side in (before, after):  # both windows at once: an idle process's CPU does not depend on the other
            side.process.stdin.write(json.dumps({"idle": idle_s}) + "\n")
            side.process.stdin.flush()
        for side in (before, after):
            side.idle = side.ask({})["idle"]


def print_sides(before: Side, after: Side) -> None:
    for side in (before, after):
        print(f"{side.label:7s} {side.meta['commit'] or '(not a git checkout)'}  ({side.tree})")
    b_sum, a_sum = targets.summary(before.rounds), targets.summary(after.rounds)
    title = "row (median of rounds)"
    print(f"\n{title:24s} {'metric':8s} {before.label:>10s} {after.label:>10s} {'after/before':>12s}")
    for row in [*before.rounds, *(r for r in after.rounds if r not in before.rounds)]:
        for name in ("p50_ms", "p99_ms", "per_s", "cpu_us", "client_p50_ms", "over_client_ms"):
            b, a = b_sum.get(row, {}).get(name), a_sum.get(row, {}).get(name)
            if b is not None or a is not None:
                change = f"{a / b:.2f}×" if a is not None and b else ""
                print(f"{row:24s} {name:8s} {_num(b):>10s} {_num(a):>10s} {change:>12s}")
    for side in (before, after):
        for row, failed in side.failures.items():
            print(f"{side.label}: {row} failed {len(failed)} time(s), e.g. {failed[0][:200]}")
    print_verdicts(targets.judge(b_sum, before.idle), targets.judge(a_sum, after.idle), before.label, after.label)


def print_verdicts(before: list[targets.Verdict], after: list[targets.Verdict], b_label: str, a_label: str) -> None:
    print(f"\n{'target (issue 15, section 2)':44s} {b_label:>11s} {a_label:>11s} {'target':>11s}  met?")
    for b, a in zip(before, after, strict=True):
        met = f"{targets.met_text(b.met) or '-'} → {targets.met_text(a.met) or '-'}" if b.limit is not None else ""
        values = f"{targets.shown(b.value, b.unit):>11s} {targets.shown(a.value, a.unit):>11s}"
        print(f"{b.name:44s} {values} {targets.limit_text(b):>11s}  {met}")


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the checkout before the change")
    parser.add_argument("--after", required=True, help="the checkout after it")
    parser.add_argument("--before-python")
    parser.add_argument("--after-python")
    parser.add_argument("--quick", action="store_true", help="as rpc.py --quick")
    parser.add_argument("--only", help="as rpc.py --only")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 3)")
    parser.add_argument("--idle", type=float, help="seconds of the idle window (10, --quick 5)")
    parser.add_argument("--json", type=Path, help="both sides' rounds, idle figures and failures")
    args, rest = parser.parse_known_args()
    unknown = [a for a in rest if a.startswith("--") and a.split("=")[0] not in RPC_FLAGS]
    if unknown:
        parser.error(f"unknown arguments {unknown}; passed on to rpc.py are only {', '.join(RPC_FLAGS)}")
    return args, rest + (["--quick"] if args.quick else [])


def main() -> int:
    args, rpc_args = parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    before = Side("before", args.before, args.before_python, rpc_args)
    after = Side("after", args.after, args.after_python, rpc_args)
    try:
        selection = before.ask({"select": {"only": args.only, "quick": args.quick}})
        idle_s = (args.idle or (5.0 if args.quick else 10.0)) if selection["idle"] else None
        run(before, after, selection["rows"], rounds, idle_s)
    finally:
        before.close()
        after.close()
    print_sides(before, after)
    if args.json:
        document = {
            side.label: {"meta": side.meta, "rounds": side.rounds, "failures": side.failures, "idle": side.idle}
            for side in (before, after)
        }
        args.json.write_text(json.dumps(document, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
