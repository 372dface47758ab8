"""Network events end to end: from a netlink change to the event in a consumer, and what a burst costs commands.

    .venv/bin/python bench/events.py [--rounds 200] [--networks 30] [--bursts 5] [--changes 1000] [--amqp URL]

A ``kvmworker worker`` process (as in production) runs with ``--netns`` on a namespace of the benchmark's own,
where a veth end plays the NIC ``eth0`` (its peer, up, waits in a second namespace) and the worker made a veth
pair ``kvtev0``/``kvtev1`` (DeviceHandler). A consumer follows the host's events on RabbitMQ (``follow``, what
``Client.events`` and ``kvmworker events`` use) in a process of its own.

1. ``link.state``: ``kvtev0`` set down/up with pyroute2, one at a time; latency = the event in the consumer minus
   the moment before the netlink call, split into the worker's part (the event's ``time``: when the watch saw
   the change) and the delivery (buffer, sender, broker with confirms, consumer);
2. ``network.state``: a flat network's bridge deleted behind the worker's back → ``degraded``; it includes the
   kernel's delete itself (an RCU grace period, ~20-40 ms) and the watch's 50 ms settle;
3. ``SystemHandler.ping`` round trips (``Client.call``) while idle, then during bursts of ``--changes`` link
   changes (``ip -batch``: ``kvtev0`` down/up as fast as the kernel takes them), from the burst's start until
   the consumer has its last event. Target: p50 during a burst ≤ 1.5× idle.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from pyroute2 import IPRoute

from kvmworker.client import Client
from kvmworker.netplane.naming import bridge_name
from kvmworker.transport.connection import delete_host_queue

ROOT = Path(__file__).resolve().parents[1]
DEVICE, PEER = "kvtev0", "kvtev1"


def ip(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *args], input=stdin, text=True, check=True, capture_output=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def row(label: str, samples: list[float]) -> str:
    p50, p99 = percentiles(samples)
    return f"{label:<48} p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  (n={len(samples)})"


CONSUMER = r"""
import json, sys, threading, time
from kvmworker.events.consumer import Gap, follow
ready = threading.Event()
def say_ready():
    ready.wait()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
threading.Thread(target=say_ready, daemon=True).start()
for item in follow(sys.argv[1], sys.argv[2], ready=ready):
    got = {"gap": item.missed} if isinstance(item, Gap) else {
        "at": time.time(), "time": item.time, "source": item.source, "subject": item.subject, "state": item.state}
    sys.stdout.write(json.dumps(got) + "\n")
    sys.stdout.flush()
"""


class Consumer:
    """The host's events as an orchestrator receives them (``follow``, in a process of its own, so that its work
    does not slow this process's pings down), each with the moment it arrived."""

    def __init__(self, url: str, host: str):
        self.events: queue.Queue[dict] = queue.Queue()
        self.gaps = 0
        args = [sys.executable, "-c", CONSUMER, url, host]
        self._process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "ready", "the consumer could not bind"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            got = json.loads(line)
            if "gap" in got:
                self.gaps += got["gap"]
            else:
                self.events.put(got)

    def wait_for(self, source: str, subject: str, state: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if (got["source"], got["subject"], got["state"]) == (source, subject, state):
                return got

    def count(self, source: str, subject: str, wanted: int, timeout: float) -> int:
        """Take events until ``wanted`` about ``subject`` came (or ``timeout``): how many came."""
        seen, deadline = 0, time.monotonic() + timeout
        while seen < wanted and time.monotonic() < deadline:
            try:
                got = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            seen += (got["source"], got["subject"]) == (source, subject)
        return seen

    def drain(self, quiet: float = 0.5) -> None:
        while True:
            try:
                self.events.get(timeout=quiet)
            except queue.Empty:
                return

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)


class Bench:
    def __init__(self, amqp: str):
        tag = uuid.uuid4().hex[:6]
        # not kvt…: test sessions running beside a benchmark delete kvt… host queues when they end
        self.amqp, self.host = amqp, f"bench-events-{tag}"
        self.ns, self.far = f"kvt-bev-{tag}", f"kvt-bevfar-{tag}"
        for name in (self.ns, self.far):
            ip("netns", "add", name)
        ip("-n", self.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", "netns", self.far)
        ip("-n", self.far, "link", "set", "eth0p", "up")
        self.state_dir = Path(tempfile.mkdtemp(prefix="kvt-bench-events-"))
        self.worker = self._start_worker()
        self.client = Client(amqp)
        self._wait_ready()
        self.consumer = Consumer(amqp, self.host)
        self.ipr = IPRoute(netns=self.ns, flags=0, groups=0)
        self.call("DeviceHandler", "create", {"name": DEVICE, "type": "veth", "peer": PEER})
        self.consumer.wait_for("link", DEVICE, "added")
        self.consumer.drain()

    def _start_worker(self) -> subprocess.Popen:
        args = [sys.executable, "-m", "kvmworker", "worker", "--host", self.host, "--broker", self.amqp]
        args += ["--state-dir", str(self.state_dir), "--netns", self.ns, "--physical-interfaces", "eth0"]
        env = os.environ | {"KVMWORKER_LOG_LEVEL": "WARNING"}
        self.log = open(self.state_dir / "worker.log", "w")  # noqa: SIM115 (closed in close())
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.client.call(self.host, "SystemHandler", "ping", timeout=2).code == 0:
                return
        raise SystemExit("the worker did not answer within 60 s")

    def call(self, handler: str, command: str, data: dict | None = None) -> dict:
        reply = self.client.call(self.host, handler, command, data or {}, timeout=30)
        assert reply.code == 0, (reply, (self.state_dir / "worker.log").read_text()[-2000:])
        return reply.data or {}

    def ping(self) -> float:
        started = time.perf_counter()
        self.call("SystemHandler", "ping")
        return time.perf_counter() - started

    def close(self) -> None:
        self.consumer.close()
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.client.close()
        self.ipr.close()
        self.log.close()
        for name in (self.ns, self.far):
            subprocess.run(["ip", "netns", "del", name], check=False)
        delete_host_queue(self.amqp, self.host)


def link_latency(bench: Bench, rounds: int) -> tuple[list[float], list[float], list[float]]:
    total, seen, delivered = [], [], []
    for i in range(rounds):
        state = "down" if i % 2 == 0 else "up"
        started = time.time()
        bench.ipr.link("set", ifname=DEVICE, state=state)
        got = bench.consumer.wait_for("link", DEVICE, state)
        total.append(got["at"] - started)
        seen.append(got["time"] - started)
        delivered.append(got["at"] - got["time"])
    bench.consumer.drain()
    return total, seen, delivered


def network_latency(bench: Bench, rounds: int) -> list[float]:
    network_id = str(uuid.uuid4())
    bridge = bridge_name(network_id)
    body = {"network_id": network_id, "network_type": "flat", "physical_interface": "eth0"}
    bench.call("NetworkHandler", "create", body)
    bench.consumer.wait_for("network", network_id, "created")
    samples = []
    for _ in range(rounds):
        started = time.time()
        bench.ipr.link("del", ifname=bridge)
        got = bench.consumer.wait_for("network", network_id, "degraded")
        samples.append(got["at"] - started)
        bench.call("NetworkHandler", "create", body)  # repair
        bench.consumer.wait_for("network", network_id, "restored")
    bench.call("NetworkHandler", "delete", {"network_id": network_id})
    bench.consumer.drain()
    return samples


def pings(bench: Bench, count: int) -> list[float]:
    return [bench.ping() for _ in range(count)]


def burst_pings(bench: Bench, changes: int) -> tuple[list[float], float, int]:
    """Pings from the burst's start until the consumer has every event about ``DEVICE`` it caused."""
    lines = [f"link set {DEVICE} {'down' if i % 2 == 0 else 'up'}" for i in range(changes)]
    done = threading.Event()
    counted = [0]

    def consume() -> None:
        counted[0] = bench.consumer.count("link", DEVICE, changes, timeout=120)
        done.set()

    counter = threading.Thread(target=consume, daemon=True)
    started = time.perf_counter()
    counter.start()
    burst = subprocess.Popen(["ip", "-n", bench.ns, "-batch", "-"], stdin=subprocess.PIPE, text=True)
    burst.communicate("\n".join(lines))
    samples = []
    while not done.is_set():
        samples.append(bench.ping())
    counter.join()
    elapsed = time.perf_counter() - started
    bench.consumer.drain()
    return samples, elapsed, counted[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--networks", type=int, default=30)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--amqp", default=os.environ.get("KVMWORKER_TEST_AMQP", "amqp://guest:guest@localhost:5672//"))
    args = parser.parse_args()

    bench = Bench(args.amqp)
    try:
        total, seen, delivered = link_latency(bench, args.rounds)
        print(row("link.state: netlink change → consumer", total))
        print(row("  of which the change → the watch's event", seen))
        print(row("  of which the event → consumer (RabbitMQ)", delivered))
        print(row("network.state: bridge deleted → degraded", network_latency(bench, args.networks)))
        idle = pings(bench, 300)
        during: list[float] = []
        for _ in range(args.bursts):
            samples, elapsed, counted = burst_pings(bench, args.changes)
            during += samples
            rate = counted / elapsed
            print(f"burst of {args.changes} changes: {counted} events in {elapsed:.2f} s ({rate:.0f}/s)", end=", ")
            print(f"{len(samples)} pings")
            idle += pings(bench, 60)  # idle samples between bursts, so both sides see the same machine
        print(row("ping, idle", idle))
        print(row("ping, during bursts", during))
        print(f"ping p50 ratio (during / idle): {percentiles(during)[0] / percentiles(idle)[0]:.2f}x  (target <= 1.5x)")
        print(f"gaps seen by the consumer: {bench.consumer.gaps}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
