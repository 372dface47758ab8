"""Latency of a libvirt change to its ``vm.lifecycle`` event in a consumer, as an orchestrator sees it.

    .venv/bin/python bench/vm_events.py [--rounds 200] [--broker amqp://guest:guest@localhost:5672//]

Runs ``kvmworker worker`` (a process of its own) on the broker and the real libvirtd (qemu:///system), a
domain without an OS (``kvt-vmev-*``, removed at the end), and a plain kombu consumer bound to
``kvmworker.events``. Each round suspends or resumes the domain behind the worker's back (another libvirt
connection, as virsh would) and waits for the event: *seen* is from the change to the event's ``time``
(the worker's libvirt callback), *consumed* from the change to the consumer holding the message.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import libvirt
from kombu import Connection, Consumer, Exchange, Queue

from kvmworker.transport.connection import delete_host_queue
from kvmworker.virt.connection import ensure_event_loop

KVMWORKER = str(Path(sys.executable).parent / "kvmworker")
URI = "qemu:///system"


def consume(url: str, host: str, got: queue.Queue, ready: threading.Event, stop: threading.Event) -> None:
    with Connection(url) as conn:
        exchange = Exchange("kvmworker.events", "topic", durable=True)
        bound = Queue(f"kvt.vmev.{uuid.uuid4().hex}", exchange, routing_key=f"{host}.#", exclusive=True)

        def on(message) -> None:
            got.put((time.time(), json.loads(message.body)))

        with Consumer(conn.channel(), [bound], on_message=on, no_ack=True):
            ready.set()
            while not stop.is_set():
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    continue


def wait_event(got: queue.Queue, name: str, state: str) -> tuple[float, dict]:
    while True:
        arrived, body = got.get(timeout=30)
        if body["subject"] == name and body["state"] == state:
            return arrived, body


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--broker", default="amqp://guest:guest@localhost:5672//")
    args = parser.parse_args()
    host, name = f"kvt-vmev-{uuid.uuid4().hex[:8]}", f"kvt-vmev-{uuid.uuid4().hex[:8]}"
    ensure_event_loop()
    conn = libvirt.open(URI)
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"
    )
    dom.create()
    got: queue.Queue = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    threading.Thread(target=consume, args=(args.broker, host, got, ready, stop), daemon=True).start()
    ready.wait(10)
    state_dir = tempfile.mkdtemp(prefix="kvt-vmev-bench-")
    worker = subprocess.Popen(
        [KVMWORKER, "worker", "--host", host, "--broker", args.broker, "--state-dir", state_dir, "--libvirt-uri", URI],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen, consumed = [], []
    try:
        wait_event(got, host, "online")  # the worker is online: its picture opened the libvirt connection
        for i in range(args.rounds):
            state = "suspended" if i % 2 == 0 else "resumed"
            started = time.time()
            dom.suspend() if state == "suspended" else dom.resume()
            arrived, body = wait_event(got, name, state)
            seen.append((body["time"] - started) * 1000)
            consumed.append((arrived - started) * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
        stop.set()
        dom.destroy()
        dom.undefine()
        conn.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        delete_host_queue(args.broker, host)
    for label, samples in (("seen by the worker", seen), ("consumed", consumed)):
        print(f"{label:20} p50 {percentile(samples, 50):6.2f} ms   p99 {percentile(samples, 99):6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
