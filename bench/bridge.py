"""Benchmark: POST→reply through the HTTP bridge beside the client library's RPC alone, in one run.

    .venv/bin/python bench/bridge.py [--broker amqp://guest:guest@localhost:5672//] [--duration 5]

A worker process and a bridge process (``kvmworker worker`` / ``kvmworker bridge``) on the broker;
``wrk`` (Debian package ``wrk``) drives the bridge with 1, 16 and 64 connections; then the same
number of threads call ``SystemHandler.ping`` through ``kvmworker.client.Client``. The ratios show
what the bridge adds over the RPC alone. Every process shares this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from kvmworker.client import Client
from kvmworker.transport.connection import delete_host_queue

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
# answered by the bridge itself (20001): its own HTTP + parsing ceiling, no broker involved
MALFORMED = {"handler": "SystemHandler"}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--connections", default="1,16,64")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    host = f"bench-{uuid.uuid4().hex[:8]}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, worker(host, args.broker, Path(tmp)), bridge(host, args.broker) as url:
        warm_up(url)
        with Client(args.broker) as client:
            for connections in (int(c) for c in args.connections.split(",")):
                http = run_wrk(url, connections, args.duration)
                rpc = run_rpc(client, host, connections, args.duration)
                rows.append((connections, http, rpc))
        ceiling = run_wrk(url, 64, args.duration, MALFORMED)
    report(args.broker, rows)
    print(
        f"\nbridge alone (a 20001 answered without the broker), 64 connections: {ceiling['rps']:.0f} requests/s, "
        f"p50 {ceiling['p50']:.2f} ms, p99 {ceiling['p99']:.2f} ms"
    )
    return 0


@contextlib.contextmanager
def worker(host: str, broker: str, state_dir: Path) -> Iterator[None]:
    argv = ["worker", "--host", host, "--broker", broker, "--state-dir", str(state_dir), "--log-level", "WARNING"]
    try:
        with process(argv) as proc:
            del proc
            yield
    finally:
        delete_host_queue(broker, host)


@contextlib.contextmanager
def bridge(host: str, broker: str) -> Iterator[str]:
    argv = [
        "bridge",
        "--broker",
        broker,
        "--port",
        "0",
        "--default-host",
        host,
        "--log-level",
        "WARNING",
        "--insecure-open",
    ]
    with process(argv, stdout=subprocess.PIPE) as proc:
        for line in proc.stdout:
            if found := re.search(r"(http://\S+)", line):
                yield found.group(1)
                return
        raise SystemExit("the bridge did not start")


@contextlib.contextmanager
def process(argv: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "kvmworker", *argv], text=True, **kwargs)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def warm_up(url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url + "/", json=PING, timeout=5).json()["code"] == 0:
                break
        time.sleep(0.1)
    else:
        raise SystemExit("no reply through the bridge: is the broker up?")
    with httpx.Client() as http:
        for _ in range(300):
            http.post(url + "/", json=PING)


def run_wrk(url: str, connections: int, duration: float, body: dict = PING) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.format(body=json.dumps(body)))
        script.flush()
        argv = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
        out = subprocess.run([*argv, "-s", script.name, url + "/"], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _wrk_ms(out, "50%"),
        "p99": _wrk_ms(out, "99%"),
    }


def _wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * UNITS[unit]


def run_rpc(client: Client, host: str, threads: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def loop() -> None:
        mine = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            reply = client.call(host, "SystemHandler", "ping", timeout=10)
            mine.append(time.perf_counter() - started)
            assert reply.code == 0, reply
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50": statistics.median(ordered) * 1e3,
        "p99": ordered[int(len(ordered) * 0.99) - 1] * 1e3,
    }


def report(broker: str, rows: list[tuple[int, dict, dict]]) -> None:
    print(f"\nbroker {broker.split('@')[-1]}; SystemHandler.ping; worker, bridge and load on this machine\n")
    header = f"{'conns':>5} | {'bridge rps':>10} {'p50 ms':>7} {'p99 ms':>7} | "
    header += f"{'rpc rps':>8} {'p50 ms':>7} {'p99 ms':>7} | {'rps ratio':>9} {'added p50 ms':>12}"
    print(header)
    print("-" * len(header))
    for connections, http, rpc in rows:
        print(
            f"{connections:>5} | {http['rps']:>10.0f} {http['p50']:>7.2f} {http['p99']:>7.2f} | "
            f"{rpc['rps']:>8.0f} {rpc['p50']:>7.2f} {rpc['p99']:>7.2f} | "
            f"{http['rps'] / rpc['rps']:>9.2f} {http['p50'] - rpc['p50']:>12.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
