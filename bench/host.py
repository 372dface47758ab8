"""HostHandler latency beside the subprocess tools a shell script would use, in one run.

    .venv/bin/python bench/host.py [--runs 50] [--links 500]

``--links N`` also times ``network`` and ``summary``'s network headline in a namespace of the bench's own holding N
bridges, beside ``ip -n NS -j addr``.

Each command goes through the real pipeline (validation, reply building), as the worker runs it. Target:
``summary`` p50 ≤ 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pyroute2 import IPRoute

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.host import create_host_handler
from kvmworker.inventory.network import NetworkInventory
from kvmworker.settings import Settings

# (command, the tool a shell script would run for the same facts)
PAIRS = [
    ("cpu", ["lscpu", "-J"]),
    ("memory", ["free", "-b"]),
    ("storage", ["lsblk", "-J", "-b"]),
    ("network", ["ip", "-j", "-s", "addr"]),
    ("hardware", ["lspci", "-mm"]),
    ("services", ["systemctl", "show", "libvirtd", "virtlogd", "kvmworker"]),
    ("summary", None),
]
SUMMARY_TARGET_MS = 30.0


def timings(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm: imports, first libvirt connection, pci.ids parse
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def command_runner(pipeline: Pipeline, command: str) -> Callable[[], object]:
    body = json.dumps({"command": command, "handler": "HostHandler", "data": {}}).encode()

    def run() -> object:
        reply = pipeline.handle(Delivery(body=body, content_type="application/json"))
        if reply.code != 0:
            raise SystemExit(f"{command} failed: {reply.code} {reply.data}")
        return reply

    return run


def tool_runner(argv: list[str]) -> Callable[[], object]:
    return lambda: subprocess.run(argv, capture_output=True, check=False)


def tool_note(argv: list[str] | None) -> str:
    if argv is None:
        return ""
    if shutil.which(argv[0]) is None:
        return "not installed"
    if argv[0] == "systemctl" and not Path("/run/systemd/system").is_dir():
        return "present, but systemd is not PID 1 here: it fails fast"
    return ""


def p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def many_links(count: int, runs: int) -> None:
    namespace = f"kvtbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        with IPRoute(netns=namespace, flags=0) as ipr:
            for i in range(count):
                ipr.link("add", ifname=f"kvtb{i}", kind="bridge")
        inventory = NetworkInventory(netns=namespace)
        full = statistics.median(timings(inventory.read, runs))
        headline = statistics.median(timings(inventory.summary, runs))
        tool = statistics.median(timings(tool_runner(["ip", "-n", namespace, "-j", "addr"]), runs))
        inventory.close()
        print(f"\n{count} bridges in a namespace: network {full:.1f} ms, summary's network headline {headline:.2f} ms,")
        print(f"ip -n NS -j addr {tool:.1f} ms")
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--links", type=int, default=0, help="also time a namespace holding this many bridges")
    args = parser.parse_args()
    settings = Settings(state_dir=Path("/tmp/kvmworker-bench"))
    pipeline = Pipeline(HandlerRegistry([create_host_handler(settings)]))
    print(f"{'command':<10} {'p50 ms':>8} {'p95 ms':>8}   {'tool':<32} {'p50 ms':>8}  {'tool/ours':>9}  note")
    for command, tool in PAIRS:
        ours = timings(command_runner(pipeline, command), args.runs)
        note = tool_note(tool)
        line = f"{command:<10} {statistics.median(ours):8.2f} {p(ours, 95):8.2f}   "
        if tool is None or note == "not installed":
            print(line + f"{' '.join(tool or ['-']):<32} {'-':>8}  {'-':>9}  {note}")
            continue
        theirs = timings(tool_runner(tool), args.runs)
        ratio = statistics.median(theirs) / statistics.median(ours)
        print(line + f"{' '.join(tool):<32} {statistics.median(theirs):8.2f}  {ratio:8.1f}x  {note}")
    summary = statistics.median(timings(command_runner(pipeline, "summary"), args.runs))
    verdict = "meets" if summary <= SUMMARY_TARGET_MS else "MISSES"
    print(f"\nsummary p50 {summary:.2f} ms {verdict} the {SUMMARY_TARGET_MS:.0f} ms target")
    if args.links:
        many_links(args.links, max(5, args.runs // 5))


if __name__ == "__main__":
    main()
