"""How long the operator waits for the command line: ``kvmworker --help`` and friends beside ``python -c pass``.

    .venv/bin/python bench/cli.py [--runs 20]

Each line runs a fresh process ``--runs`` times and reports the median and the slowest wall time; the goal for
``--help`` is under 0.3 s (issue 12). ``python -c pass`` is the floor no Python command line can go under.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

KVMWORKER = str(Path(sys.executable).parent / "kvmworker")
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "kvmworker --version": [KVMWORKER, "--version"],
    "kvmworker --help": [KVMWORKER, "--help"],
    "kvmworker call --help": [KVMWORKER, "call", "--help"],
    "kvmworker status --help": [KVMWORKER, "status", "--help"],
    "kvmworker replay --help": [KVMWORKER, "replay", "--help"],
    "kvmworker worker --help": [KVMWORKER, "worker", "--help"],
    "kvmworker completion bash": [KVMWORKER, "completion", "bash"],
    "kvmworker call (memory:// refusal)": [KVMWORKER, "call", "h", "SystemHandler", "ping"],
}


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"{'command':<38} {'median':>8} {'max':>8}")
    for name, argv in CASES.items():
        times = timed(argv, args.runs)
        print(f"{name:<38} {statistics.median(times) * 1000:>6.0f}ms {max(times) * 1000:>6.0f}ms")


if __name__ == "__main__":
    main()
