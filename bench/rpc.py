"""RPC round trip and throughput: kvmworker over RabbitMQ and Redis, beside a raw py-amqp loop, in one run.

    .venv/bin/python bench/rpc.py [--calls 2000] [--amqp URL] [--redis URL]

The raw loop is the floor: a py-amqp responder that answers each message with a reply to ``reply_to``,
and a py-amqp caller that waits for it. The worker runs in a subprocess (as in production), so the
caller and the worker do not share a GIL; the raw responder does too.

Two mixed rows split the cost: the raw caller against the kvmworker worker (what the worker adds over a
responder that does nothing), and the kvmworker client against the raw responder (what the client adds).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp

from kvmworker.client import Client
from kvmworker.protocol.wire import host_queue_name
from kvmworker.transport.connection import delete_host_queue

ROOT = Path(__file__).resolve().parents[1]

RAW_RESPONDER = r"""
import sys, amqp
conn = amqp.Connection(sys.argv[1]); conn.connect(); ch = conn.channel()
ch.queue_declare(sys.argv[2], passive=sys.argv[3] == "existing", auto_delete=sys.argv[3] != "existing")
def on(msg):
    ch.basic_publish(amqp.Message(b'{"code":0,"msg":"ok","data":null}', correlation_id=msg.correlation_id),
                     exchange="", routing_key=msg.reply_to)
    ch.basic_ack(msg.delivery_tag)
ch.basic_qos(0, 32, False); ch.basic_consume(sys.argv[2], callback=on)
print("ready", flush=True)
while True:
    conn.drain_events()
"""


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    p50, p99 = s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {p50 * 1000:6.3f} ms  p99 {p99 * 1000:6.3f} ms"


def raw_responder(host_port: str, queue: str, existing: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-c", RAW_RESPONDER, host_port, queue, "existing" if existing else "own"]
    responder = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert responder.stdout.readline().strip() == b"ready"
    return responder


def raw_caller(host_port: str, queue: str, calls: int, body: bytes = b'{"x":1}') -> list[float]:
    """A py-amqp caller: publish, then drain until the reply with this correlation id is in."""
    conn = amqp.Connection(host_port)
    conn.connect()
    ch = conn.channel()
    reply_q, _, _ = ch.queue_declare("", exclusive=True)
    got: dict[str, bool] = {}
    ch.basic_consume(reply_q, callback=lambda m: got.__setitem__(m.correlation_id, True), no_ack=True)
    samples = []
    for _ in range(calls):
        cid = uuid.uuid4().hex
        props = {"correlation_id": cid, "reply_to": reply_q, "message_id": str(uuid.uuid4())}
        t = time.perf_counter()
        ch.basic_publish(amqp.Message(body, content_type="application/json", **props), "", queue)
        while cid not in got:
            conn.drain_events(timeout=10)
        samples.append(time.perf_counter() - t)
    conn.close()
    return samples


def raw_amqp_loop(host_port: str, calls: int) -> list[float]:
    queue = f"bench.raw.{uuid.uuid4().hex[:6]}"
    responder = raw_responder(host_port, queue)
    try:
        return raw_caller(host_port, queue, calls)
    finally:
        responder.kill()


def raw_caller_to_worker(url: str, host_port: str, calls: int) -> list[float]:
    """What the worker adds: the raw caller against a kvmworker worker (defaults: confirms on)."""
    ping = b'{"handler":"SystemHandler","command":"ping","data":{}}'
    with bench_worker(url, confirms=True) as host:
        raw_caller(host_port, host_queue_name(host), 200, ping)
        return raw_caller(host_port, host_queue_name(host), calls, ping)


def client_to_raw_responder(url: str, host_port: str, calls: int) -> list[float]:
    """What the client adds: the kvmworker client (defaults) against the raw responder."""
    host = f"bench-{uuid.uuid4().hex[:6]}"
    with Client(url) as client:
        client.call(host, "SystemHandler", "ping", timeout=0.2)  # declares the host's queue, unanswered
        responder = raw_responder(host_port, host_queue_name(host), existing=True)
        try:
            client.call(host, "SystemHandler", "ping", timeout=10)
            return sequential(client, host, calls)
        finally:
            responder.kill()
            delete_host_queue(url, host)


@contextlib.contextmanager
def bench_worker(url: str, confirms: bool) -> Iterator[str]:
    """A worker process for a fresh host, consuming when this yields the host; its queue goes afterwards."""
    host = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as state:
        cmd = [sys.executable, "-m", "kvmworker", "worker", "--host", host, "--broker", url, "--state-dir", state]
        cmd += ["--log-level", "WARNING", "--workers", "16", "--prefetch", "128"]
        cmd += [] if confirms else ["--no-publish-confirms"]
        worker = subprocess.Popen(cmd, cwd=ROOT)
        try:
            with Client(url) as client:  # warm up, and wait for the worker to consume
                assert any(client.call(host, "SystemHandler", "ping", timeout=10).code == 0 for _ in range(50))
            yield host
        finally:
            worker.terminate()
            worker.wait(15)
            delete_host_queue(url, host)


def sequential(client: Client, host: str, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        reply = client.call(host, "SystemHandler", "ping", timeout=10)
        samples.append(time.perf_counter() - t)
        assert reply.code == 0, reply
    return samples


def concurrent(client: Client, host: str, callers: int, per_caller: int) -> float:
    def run() -> None:
        for _ in range(per_caller):
            assert client.call(host, "SystemHandler", "ping", timeout=30).code == 0

    threads = [threading.Thread(target=run) for _ in range(callers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return callers * per_caller / (time.perf_counter() - t)


def bench_transport(label: str, url: str, calls: int, confirms: bool, persistent: bool) -> list[float]:
    with bench_worker(url, confirms) as host, Client(url, confirms=confirms, persistent=persistent) as client:
        sequential(client, host, 200)
        samples = sequential(client, host, calls)
        print(f"  {label:44s} sequential  {percentiles(samples)}")
        for callers in (1, 8, 64):
            rate = concurrent(client, host, callers, max(20, calls // callers))
            print(f"  {label:44s} {callers:2d} callers  {rate:8.0f} commands/s")
        return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--redis", default="redis://localhost:6379/0")
    args = parser.parse_args()

    print("RabbitMQ")
    raw = raw_amqp_loop("localhost:5672", args.calls)
    print(f"  {'raw py-amqp publish→consume→reply loop':44s} sequential  {percentiles(raw)}")
    fast = bench_transport("kvmworker, no confirms, transient", args.amqp, args.calls, False, False)
    safe = bench_transport("kvmworker, confirms, persistent (default)", args.amqp, args.calls, True, True)
    base = statistics.median(raw)
    fast_ratio, safe_ratio = statistics.median(fast) / base, statistics.median(safe) / base
    print(f"  ratio to raw p50: no confirms {fast_ratio:.2f}×, default {safe_ratio:.2f}×")
    worker_only = raw_caller_to_worker(args.amqp, "localhost:5672", args.calls)
    print(f"  {'raw caller → kvmworker worker (default)':44s} sequential  {percentiles(worker_only)}")
    client_only = client_to_raw_responder(args.amqp, "localhost:5672", args.calls)
    print(f"  {'kvmworker client (default) → raw responder':44s} sequential  {percentiles(client_only)}")
    added = (statistics.median(worker_only) - base) * 1000, (statistics.median(client_only) - base) * 1000
    print(f"  added over the raw loop at p50: worker {added[0]:.3f} ms, client {added[1]:.3f} ms")
    print("Redis")
    bench_transport("kvmworker (default)", args.redis, args.calls, True, True)


if __name__ == "__main__":
    main()
