"""Same-load ratios on a shared, noisy machine: every subject answers short batches of calls in turn, many rounds.

    python3 bench/interleave.py --before DIR --after DIR [--before-python P --after-python P]
        [--broker amqp|redis|both] [--batches N --per N] [--json FILE]

``compare.py`` measures a row's rounds one after the other, so the machine's load moves between the sides:
identical code reads anywhere from 0.67× to 1.63×. Here one caller process starts every subject once, then runs
``--batches`` rounds in which each subject answers ``--per`` sequential calls, the order rotated each round (and
reversed every other cycle), so that whatever loads the machine loads every subject alike. Latency: median and
p99 over all of a subject's calls. CPU: the responder's (worker's) CPU measured around each of its batches
(``procstat.CpuMeter``), summed, per message. "halves": the same ratio over the first and the second half of
the batches, a glimpse of how far it moves within one run.

Subjects per broker (``bench/lab.py``'s raw subjects, ``bench/subjects.py``'s worker):

- ``amqp-raw`` / ``redis-raw``: the raw loop with the broker's own client library.
- ``amqp-raw-guarantees`` / ``redis-raw-guarantees``: the raw loop with the default path's guarantees.
- ``amqp-default-before`` / ``-after`` (``redis-…``): ``python -m kvmworker worker`` of each checkout, with that
  checkout's Python and ``PYTHONPATH`` (default settings: confirms + persistent).

Both workers are called by one client: the AFTER checkout's ``kvmworker.client.Client`` (defaults), in this
process: the script re-runs itself with the after checkout's Python and ``PYTHONPATH``. The raw subjects are
called by their raw callers. Queues, Redis keys and workers are removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare

HERE = Path(__file__).resolve()
# set (to the launcher's own PYTHONPATH) when this process runs with the after checkout's Python
CLIENT_SIDE = "KVT_INTERLEAVE_CLIENT"

if CLIENT_SIDE in os.environ:  # the measuring side: the after checkout's kvmworker, the bench's neighbours
    import procstat
    from peers import AmqpPeer, RedisPeer
    from subjects import AmqpConfirmPeer, KvmSubject, RedisGuaranteesPeer, delete_queue, new_host, stop

    from kvmworker.client import Client
else:  # the launcher (``python3 bench/interleave.py``, maybe without amqp or kvmworker) only re-runs this file
    KvmSubject = object

GOALS = {"amqp": 1.6, "redis": 1.5}  # issue 15: default p50 / raw p50 at most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the checkout before the change")
    parser.add_argument("--after", required=True, help="the checkout after it (its client calls both workers)")
    parser.add_argument("--before-python")
    parser.add_argument("--after-python")
    parser.add_argument("--broker", choices=("amqp", "redis", "both"), default="both")
    parser.add_argument("--batches", type=int, default=100, help="rounds of batches (100)")
    parser.add_argument("--per", type=int, default=40, help="sequential calls per subject and batch (40)")
    parser.add_argument("--warm-up", type=int, default=200, help="calls per subject before the rounds (200)")
    parser.add_argument("--json", type=Path, help="the exact values")
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--redis", default="redis://localhost:6379/0")
    return parser.parse_args(argv)


def checkout(tree: str, python: str | None, label: str) -> dict:
    """A checkout's Python and environment (``compare.py``'s conventions), refused if it imports elsewhere."""
    path = Path(tree).resolve()
    python, env = compare.interpreter(path, python)
    compare.check_imports_from(path, python, env, label)
    git = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    commit = git.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    return {"tree": str(path), "python": python, "env": env, "commit": commit}


def rerun_with_after_client(args: argparse.Namespace) -> None:
    """Replace this process by the same command under the after checkout's Python, its tree on the path."""
    after = checkout(args.after, args.after_python, "after")
    env = dict(after["env"])
    env[CLIENT_SIDE] = os.environ.get("PYTHONPATH", "")
    os.execve(after["python"], [after["python"], str(HERE), *sys.argv[1:]], env)


# -- the subjects ---------------------------------------------------------------------------------


class CheckoutWorker(KvmSubject):
    """``python -m kvmworker worker`` of one checkout (its Python, its ``PYTHONPATH``) for a fresh host, called
    through a client it shares with the other checkout's worker (so closing it leaves the client open)."""

    def __init__(self, url: str, side: dict, client):
        self.url, self.host, self.client = url, new_host(), client
        self._scratch = tempfile.TemporaryDirectory(prefix="kvt-bench-")
        scratch = Path(self._scratch.name)
        argv = [side["python"], "-m", "kvmworker", "worker", "--host", self.host, "--broker", url]
        argv += ["--state-dir", str(scratch / "state"), "--log-level", "WARNING"]
        with (scratch / "worker.log").open("ab") as log:
            self.process = subprocess.Popen(argv, cwd=scratch, env=side["env"], stderr=log)
        try:
            self._warm_up()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop(self.process)
        with contextlib.suppress(Exception):  # the broker may be what failed; the scratch still goes
            delete_queue(self.url, self.host)
        self._scratch.cleanup()


def start_subjects(args: argparse.Namespace, sides: dict[str, dict], stack: contextlib.ExitStack) -> dict:
    """Every subject, started once, each closed by ``stack``: name → object with ``.pid`` and a caller."""
    host_port = args.amqp.split("@")[-1].split("/")[0]
    brokers = ("amqp", "redis") if args.broker == "both" else (args.broker,)
    raw = {
        "amqp-raw": lambda: AmqpPeer(host_port),
        "amqp-raw-guarantees": lambda: AmqpConfirmPeer(host_port, confirmed=True),
        "redis-raw": lambda: RedisPeer(args.redis),
        "redis-raw-guarantees": lambda: RedisGuaranteesPeer(args.redis),
    }
    found = {}
    for broker in brokers:
        url = args.amqp if broker == "amqp" else args.redis
        for name in (f"{broker}-raw", f"{broker}-raw-guarantees"):
            print(f"starting {name}", file=sys.stderr, flush=True)
            found[name] = stack.enter_context(contextlib.closing(raw[name]()))
        client = stack.enter_context(contextlib.closing(Client(url)))
        for label in ("before", "after"):
            print(f"starting {broker}-default-{label}", file=sys.stderr, flush=True)
            worker = CheckoutWorker(url, sides[label], client)
            found[f"{broker}-default-{label}"] = stack.enter_context(contextlib.closing(worker))
    return found


def caller_of(subject):
    return getattr(subject, "caller", subject)


# -- the rounds -----------------------------------------------------------------------------------


def run(subjects: dict, batches: int, per: int, warm_up: int) -> dict[str, dict[str, list]]:
    """Per subject, per batch: the call latencies (s) and the responder's CPU (s)."""
    for subject in subjects.values():
        caller_of(subject).latencies(warm_up)
    names = list(subjects)
    measured = {name: {"latencies": [], "cpu": []} for name in names}
    started = time.monotonic()
    for number in range(batches):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        if (number // len(names)) % 2:  # every other cycle backwards: no subject always follows the same one
            order.reverse()
        for name in order:
            subject = subjects[name]
            meter = procstat.CpuMeter(subject.pid).start()
            samples = caller_of(subject).latencies(per)
            cpu, _ = meter.stop()
            measured[name]["latencies"].append(samples)
            measured[name]["cpu"].append(cpu)
        if (number + 1) % max(1, batches // 10) == 0:
            elapsed = time.monotonic() - started
            print(f"batch {number + 1}/{batches}  {elapsed:.0f} s", file=sys.stderr, flush=True)
    return measured


def figures(batches: list[list[float]], cpu: list[float]) -> dict[str, float]:
    ordered = sorted(s for batch in batches for s in batch)
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1e3,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3,
        "cpu_us": sum(cpu) / len(ordered) * 1e6,
        "calls": len(ordered),
    }


def summarise(measured: dict[str, dict[str, list]]) -> dict:
    """Each subject's figures over all batches, and over each half of them (how much a ratio moves in one run)."""
    result = {}
    for name, found in measured.items():
        half = len(found["cpu"]) // 2
        halves = [slice(0, half), slice(half, None)] if half else []
        result[name] = figures(found["latencies"], found["cpu"]) | {
            "halves": [figures(found["latencies"][part], found["cpu"][part]) for part in halves]
        }
    return result


RATIOS = [  # (name, numerator, denominator, metric, goal key)
    ("{b} default p50 / raw p50 (after)", "{b}-default-after", "{b}-raw", "p50_ms", "goal"),
    ("{b} default p50 / raw p50 (before)", "{b}-default-before", "{b}-raw", "p50_ms", "goal"),
    ("{b} default p50 / raw-guarantees p50 (after)", "{b}-default-after", "{b}-raw-guarantees", "p50_ms", None),
    ("{b} default p50 / raw-guarantees p50 (before)", "{b}-default-before", "{b}-raw-guarantees", "p50_ms", None),
    ("{b} raw-guarantees p50 / raw p50", "{b}-raw-guarantees", "{b}-raw", "p50_ms", None),
    ("{b} after / before p50", "{b}-default-after", "{b}-default-before", "p50_ms", None),
    ("{b} after / before p99", "{b}-default-after", "{b}-default-before", "p99_ms", None),
    ("{b} after / before CPU per msg", "{b}-default-after", "{b}-default-before", "cpu_us", None),
    ("{b} default CPU / raw-guarantees CPU (after)", "{b}-default-after", "{b}-raw-guarantees", "cpu_us", None),
]


def ratios(summary: dict) -> dict[str, dict]:
    result = {}
    for broker in ("amqp", "redis"):
        for template, top, bottom, metric, goal in RATIOS:
            top, bottom = top.format(b=broker), bottom.format(b=broker)
            if top not in summary or bottom not in summary:
                continue
            whole = summary[top][metric] / summary[bottom][metric]
            halves = [
                t[metric] / b[metric] for t, b in zip(summary[top]["halves"], summary[bottom]["halves"], strict=True)
            ]
            result[template.format(b=broker)] = {
                "value": whole,
                "halves": halves,
                "at_most": GOALS[broker] if goal else None,
            }
    return result


def report(sides: dict[str, dict], args: argparse.Namespace, summary: dict, found: dict[str, dict]) -> None:
    for label in ("before", "after"):
        print(f"{label:7s} {sides[label]['commit'] or '(not a git checkout)'}  ({sides[label]['tree']})")
    print(f"client  the after checkout's kvmworker.client.Client (defaults), in this process ({sys.executable})")
    calls = f"{args.batches} batches × {args.per} calls per subject, order rotated each batch, reversed each cycle"
    print(f"{calls}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(f"{'subject':24s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU µs/msg':>11s} {'calls':>7s}")
    for name, one in summary.items():
        print(f"{name:24s} {one['p50_ms']:8.3f} {one['p99_ms']:8.3f} {one['cpu_us']:11.0f} {one['calls']:7d}")
    print(f"\n{'ratio':48s} {'value':>7s} {'halves':>13s} {'goal':>7s}  met?")
    for name, one in found.items():
        halves = "–".join(f"{h:.2f}" for h in one["halves"])
        goal, met = "", ""
        if one["at_most"] is not None:
            goal, met = f"≤ {one['at_most']}×", "yes" if one["value"] <= one["at_most"] else "no"
        print(f"{name:48s} {one['value']:6.3f}× {halves:>13s} {goal:>7s}  {met}".rstrip())


def measure(args: argparse.Namespace) -> int:
    # each worker's environment as the launcher's, not this process's (the after tree first on its path)
    os.environ["PYTHONPATH"] = os.environ.pop(CLIENT_SIDE)
    sides = {
        "before": checkout(args.before, args.before_python, "before"),
        "after": checkout(args.after, args.after_python, "after"),
    }
    with contextlib.ExitStack() as stack:
        subjects = start_subjects(args, sides, stack)
        measured = run(subjects, args.batches, args.per, args.warm_up)
    summary = summarise(measured)
    found = ratios(summary)
    report(sides, args, summary, found)
    if args.json:
        meta = {label: {k: v for k, v in side.items() if k != "env"} for label, side in sides.items()}
        meta["client"] = "after"
        document = {"meta": meta, "batches": args.batches, "per": args.per, "subjects": summary, "ratios": found}
        args.json.write_text(json.dumps(document, indent=1, ensure_ascii=False))
    return 0


def main() -> int:
    args = parse_args()
    if CLIENT_SIDE not in os.environ:
        rerun_with_after_client(args)  # does not return
    # SIGTERM unwinds like Ctrl-C, so that the workers stop and the queues and keys go
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
