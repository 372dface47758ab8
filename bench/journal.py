"""What the journal costs a command: RPC round trips over RabbitMQ with and without it, in the same run.

    .venv/bin/python bench/journal.py [--broker amqp://guest:guest@localhost:5672//] [--calls 2000]

Two workers in this process, identical but for the journal middleware, each on a queue of its own.
Rounds alternate between them so that drift (broker, page cache, CPU frequency) hits both alike.
Reported: sequential round-trip latency (median, p95) and throughput with concurrent callers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvmworker.app import assemble
from kvmworker.client import Client
from kvmworker.dispatch.executor import KeyedExecutor
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue, open_connection
from kvmworker.transport.publisher import Publisher
from kvmworker.transport.worker import Worker


def start(settings: Settings, *, journal: bool) -> Worker:
    assembly = assemble(settings)
    middleware = [mw for mw in assembly.pipeline.middleware if journal or mw is not assembly.journal]
    pipeline = Pipeline(assembly.registry, middleware, host=settings.host, executor=KeyedExecutor(settings.workers))
    worker = Worker(
        open_connection(settings.broker_url), Publisher(open_connection(settings.broker_url)), pipeline, settings.host
    )
    threading.Thread(target=worker.run, daemon=True).start()
    assert worker.connected.wait(15), "worker did not connect"
    return worker


def round_trips(client: Client, host: str, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        reply = client.call(host, "SystemHandler", "ping", msg_id=str(uuid.uuid4()))
        times.append(time.perf_counter() - started)
        assert reply.code == 0, reply
    return times


def throughput(client: Client, host: str, calls: int, callers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda _: round_trips(client, host, calls // callers), range(callers)))
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kvmbench-"))
    hosts = {"with journal": f"bench-j-{uuid.uuid4().hex[:6]}", "without": f"bench-n-{uuid.uuid4().hex[:6]}"}
    workers = [
        start(Settings(host=host, broker_url=args.broker, state_dir=state / name.replace(" ", "-")), journal=j)
        for (name, host), j in zip(hosts.items(), (True, False), strict=True)
    ]
    latency: dict[str, list[float]] = {name: [] for name in hosts}
    rate: dict[str, list[float]] = {name: [] for name in hosts}
    with Client(args.broker) as client:
        for host in hosts.values():
            round_trips(client, host, 100)  # warm up: connections, page cache, first-call imports
        per_round = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):
            for name, host in hosts.items():
                latency[name] += round_trips(client, host, per_round)
                rate[name].append(throughput(client, host, per_round, args.callers))
    for worker in workers:
        worker.stop()
    for host in hosts.values():
        delete_host_queue(args.broker, host)
    print(f"{args.calls} sequential calls and {args.calls} with {args.callers} callers per worker, {args.broker}")
    for name in hosts:
        ms = sorted(t * 1000 for t in latency[name])
        print(
            f"  {name:<13} median {statistics.median(ms):6.3f} ms   p95 {ms[int(len(ms) * 0.95)]:6.3f} ms"
            f"   {statistics.median(rate[name]):7.0f} calls/s"
        )
    with_j, without = (statistics.median(latency[n]) for n in hosts)
    rate_j, rate_n = (statistics.median(rate[n]) for n in hosts)
    print(f"  ratio (with / without): latency {with_j / without:.3f}, throughput {rate_j / rate_n:.3f}")
    print(f"  journal: {sum(1 for _ in (state / 'with-journal').iterdir())} files in {state / 'with-journal'}")


if __name__ == "__main__":
    main()
