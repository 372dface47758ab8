"""Before and after, side by side, in one run: ``bench/rpc.py`` against two checkouts, runs alternating.

    python3 bench/compare.py --before /work/main --after /work/wt/x [--repeat 2] [--json FILE] [-- --quick …]

Each checkout runs with its own Python: ``DIR/.venv/bin/python`` when there is one (``--before-python`` /
``--after-python`` to choose another), else this Python with ``PYTHONPATH=DIR``; a checkout whose
``kvmworker`` does not import from DIR is refused. Both sides run the same bench (the ``rpc.py`` next to
this file), ``--repeat`` times each in the order A B B A A B …, so that drift on this shared machine hits
both alike; the rounds of one side's runs are pooled and judged as one run. Arguments after ``--`` go to
every ``rpc.py`` run (``--quick``, ``--only``, ``--rounds``…).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import targets

RPC = Path(__file__).resolve().with_name("rpc.py")


@dataclass
class Side:
    label: str
    tree: Path
    python: str
    env: dict[str, str]
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    idle_runs: list[dict[str, dict[str, float]]] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)
    commit: str = ""

    def add(self, document: dict) -> None:
        for row, measured in document["rounds"].items():
            self.rounds.setdefault(row, []).extend(measured)
        self.idle_runs.append(document["idle"])
        for row, failed in document["failures"].items():
            self.failures.setdefault(row, []).extend(failed)
        self.commit = document["meta"]["commit"]

    def idle(self) -> dict[str, dict[str, float]]:
        """Per subject and figure, the median over the runs."""
        pooled: dict[str, list[dict[str, float]]] = {}
        for run in self.idle_runs:
            for subject, figures in run.items():
                pooled.setdefault(subject, []).append(figures)
        return {subject: targets.summary({"x": runs})["x"] for subject, runs in pooled.items()}


def side(label: str, tree: str, python: str | None) -> Side:
    root = Path(tree).resolve()
    venv = root / ".venv" / "bin" / "python"
    env = dict(os.environ)
    if python is None and venv.exists():
        python = str(venv)
    elif python is None:
        python = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    found = subprocess.run(
        [python, "-c", "import kvmworker; print(kvmworker.__file__)"],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root):
        sys.exit(f"{label}: {python} imports kvmworker from {found}, not from {root}")
    return Side(label, root, python, env)


def run_once(one: Side, rpc_args: list[str]) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [one.python, str(RPC), *rpc_args, "--json", out.name]
        print(f"== {one.label}: {' '.join(argv)}", file=sys.stderr, flush=True)
        subprocess.run(argv, env=one.env, cwd=tempfile.gettempdir(), check=True, stdout=sys.stderr)
        one.add(json.loads(Path(out.name).read_text()))


def print_sides(before: Side, after: Side) -> None:
    for one in (before, after):
        print(f"{one.label:7s} {one.commit}  ({one.tree})")
    b_sum, a_sum = targets.summary(before.rounds), targets.summary(after.rounds)
    title = "row (median of pooled rounds)"
    print(f"\n{title:30s} {'metric':8s} {before.label:>10s} {after.label:>10s} {'after/before':>12s}")
    for row in [*before.rounds, *(r for r in after.rounds if r not in before.rounds)]:
        for name in ("p50_ms", "per_s", "cpu_us"):
            b, a = b_sum.get(row, {}).get(name), a_sum.get(row, {}).get(name)
            if b is None and a is None:
                continue
            change = f"{a / b:.2f}×" if a is not None and b else ""
            print(f"{row:30s} {name:8s} {_num(b):>10s} {_num(a):>10s} {change:>12s}")
    for one in (before, after):
        for row, failed in one.failures.items():
            print(f"{one.label}: {row} failed {len(failed)} time(s), e.g. {failed[0][:200]}")
    b_verdicts, a_verdicts = targets.judge(b_sum, before.idle()), targets.judge(a_sum, after.idle())
    print(f"\n{'target (issue 15, section 2)':44s} {before.label:>11s} {after.label:>11s} {'target':>11s}  met?")
    for b, a in zip(b_verdicts, a_verdicts, strict=True):
        met = f"{targets.met_text(b.met) or '-'} → {targets.met_text(a.met) or '-'}" if b.limit is not None else ""
        print(
            f"{b.name:44s} {targets.shown(b.value, b.unit):>11s} {targets.shown(a.value, a.unit):>11s} "
            f"{targets.limit_text(b):>11s}  {met}"
        )


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the checkout before the change")
    parser.add_argument("--after", required=True, help="the checkout after it")
    parser.add_argument("--before-python")
    parser.add_argument("--after-python")
    parser.add_argument("--repeat", type=int, default=2, help="runs per checkout (default 2)")
    parser.add_argument("--json", type=Path, help="both sides' pooled rounds and idle figures")
    parser.add_argument("rpc_args", nargs=argparse.REMAINDER, help="after --: arguments for every rpc.py run")
    args = parser.parse_args()
    rpc_args = [a for a in args.rpc_args if a != "--"]
    before = side("before", args.before, args.before_python)
    after = side("after", args.after, args.after_python)
    for number in range(args.repeat):
        for one in (before, after) if number % 2 == 0 else (after, before):
            run_once(one, rpc_args)
    print_sides(before, after)
    if args.json:
        document = {
            one.label: {
                "commit": one.commit,
                "tree": str(one.tree),
                "rounds": one.rounds,
                "failures": one.failures,
                "idle": one.idle(),
            }
            for one in (before, after)
        }
        args.json.write_text(json.dumps(document, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
