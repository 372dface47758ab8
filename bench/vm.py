"""VmHandler latency: the worker's long-lived connection beside a fresh connection per call, same run.

    .venv/bin/python bench/vm.py [--domains 500] [--rounds 50] [--system]

``list`` over N defined domains and ``info`` of one, on libvirt's test driver (targets: list of 500
≤ 50 ms, info ≤ 2 ms). ``--system`` adds ``info`` on the real libvirtd (qemu:///system), where a
fresh connection also pays the socket and authentication handshake.

``stats`` of ``--stats-domains`` (100) domains on a test-driver node file (the same domains for the worker and for
``virsh``), beside ``virsh domstats`` (a process per call, as a script would run it) and the bare bulk
``getAllDomainStats`` in this process (the floor), in the same run, interleaved round by round. ``--system``
repeats it on qemu:///system over ``--stats-domains`` defined (not running) ``kvt-bench-`` domains, undefined
afterwards even on failure; there both pay the daemon's socket, and ``virsh`` also its connection handshake.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import libvirt

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.vm import VmHandler
from kvmworker.virt.connection import LibvirtConnection, ensure_event_loop
from kvmworker.virt.storage import StorageRules


def pipeline_for(connection: LibvirtConnection) -> Pipeline:
    return Pipeline(HandlerRegistry([VmHandler(connection, StorageRules(["/var/lib/libvirt/images"], "default"))]))


def request(command: str, **data: object) -> Delivery:
    body = {"handler": "VmHandler", "command": command, "data": data}
    return Delivery(body=json.dumps(body).encode(), content_type="application/json")


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def long_lived(uri: str, command: str, **data: object) -> Callable[[], object]:
    pipeline = pipeline_for(LibvirtConnection(uri))

    def run() -> None:
        reply = pipeline.handle(request(command, **data))
        assert reply.code == 0, reply

    return run


def fresh_per_call(uri: str, command: str, **data: object) -> Callable[[], object]:
    """The baseline: what a worker that opens libvirt for every command pays."""

    def run() -> None:
        connection = LibvirtConnection(uri)
        reply = pipeline_for(connection).handle(request(command, **data))
        connection.close()
        assert reply.code == 0, reply

    return run


def report(label: str, ours: list[float], baseline: list[float]) -> None:
    p50, base50 = statistics.median(ours), statistics.median(baseline)
    p95 = statistics.quantiles(ours, n=20)[18]
    print(
        f"{label:<34} long-lived p50 {p50:8.3f} ms  p95 {p95:8.3f} ms | "
        f"fresh per call p50 {base50:8.3f} ms | ratio {base50 / p50:6.1f}x"
    )


def define_many(conn: libvirt.virConnect, count: int, prefix: str) -> list[libvirt.virDomain]:
    xml = "<domain type='test'><name>{}</name><memory>65536</memory><os><type>hvm</type></os></domain>"
    return [conn.defineXML(xml.format(f"{prefix}{i:04d}")) for i in range(count)]


def bench_test_driver(domains: int, rounds: int) -> None:
    uri = "test:///default"
    keeper = libvirt.open(uri)  # the test driver's state lives as long as one connection to it does
    prefix = f"kvb-{uuid.uuid4().hex[:6]}-"
    defined = define_many(keeper, domains, prefix)
    try:
        total = len(keeper.listAllDomains(0))
        report(f"list ({total} domains, test driver)", timed(long_lived(uri, "list"), rounds),
               timed(fresh_per_call(uri, "list"), rounds))  # fmt: skip
        name = f"{prefix}0000"
        report("info (test driver)", timed(long_lived(uri, "info", name=name), rounds * 10),
               timed(fresh_per_call(uri, "info", name=name), rounds * 10))  # fmt: skip
    finally:
        for dom in defined:
            dom.undefine()
        keeper.close()


def bench_stats(domains: int, rounds: int) -> None:
    """The worker's ``stats`` beside ``virsh domstats`` and the bare bulk call, over one node file's domains."""
    xml = "<domain type='test'><name>kvb-{:04d}</name><memory>65536</memory><os><type>hvm</type></os></domain>"
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="kvb-node-") as node:
        node.write("<node>" + "".join(xml.format(i) for i in range(domains)) + "</node>")
        node.flush()
        compare_stats(f"test://{node.name}", "test driver", rounds)


def bench_stats_system(domains: int, rounds: int) -> None:
    """The same on qemu:///system over ``domains`` defined (not running) domains, undefined afterwards."""
    conn = libvirt.open("qemu:///system")
    prefix = f"kvt-bench-{uuid.uuid4().hex[:6]}-"
    xml = "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><os><type>hvm</type></os></domain>"
    try:
        for i in range(domains):
            conn.defineXML(xml.format(f"{prefix}{i:04d}"))
        compare_stats("qemu:///system", "qemu:///system", rounds)
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                dom.undefine()
        conn.close()


def compare_stats(uri: str, where: str, rounds: int) -> None:
    """Interleaved rounds: the worker's ``stats``, ``virsh domstats`` (a process per call), the bare bulk call."""
    ours = long_lived(uri, "stats")
    ours()  # the first call opens the connection
    conn = libvirt.open(uri)
    count = len(conn.listAllDomains(0))
    rows: dict[str, Callable[[], object]] = {
        f"stats ({count} domains, {where}, worker)": ours,
        "virsh domstats (a process per call)": lambda: subprocess.run(
            ["virsh", "-c", uri, "domstats"], check=True, capture_output=True
        ),
        "bare getAllDomainStats (in-process)": lambda: conn.getAllDomainStats(0, 0),
    }
    samples: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(rounds):
        for label, fn in rows.items():
            samples[label].extend(timed(fn, 1))
    conn.close()
    worker = statistics.median(next(iter(samples.values())))
    for label, values in samples.items():
        p50, p99 = statistics.median(values), statistics.quantiles(values, n=100, method="inclusive")[98]
        print(f"{label:<52} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms | {p50 / worker:6.2f}x the worker")


def bench_system(rounds: int) -> None:
    uri = "qemu:///system"
    conn = libvirt.open(uri)
    name = f"kvb-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
                         "<os><type>hvm</type></os></domain>")  # fmt: skip
    try:
        report("info (qemu:///system, libvirtd)", timed(long_lived(uri, "info", name=name), rounds),
               timed(fresh_per_call(uri, "info", name=name), rounds))  # fmt: skip
        report("list (qemu:///system, libvirtd)", timed(long_lived(uri, "list"), rounds),
               timed(fresh_per_call(uri, "list"), rounds))  # fmt: skip
    finally:
        dom.undefine()
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--system", action="store_true", help="also measure on qemu:///system")
    parser.add_argument("--stats-domains", type=int, default=100)
    parser.add_argument("--only-stats", action="store_true", help="only the stats comparisons")
    args = parser.parse_args()
    ensure_event_loop()
    if not args.only_stats:
        bench_test_driver(args.domains, args.rounds)
    bench_stats(args.stats_domains, args.rounds)
    if args.system:
        if not args.only_stats:
            bench_system(args.rounds)
        bench_stats_system(args.stats_domains, args.rounds)


if __name__ == "__main__":
    main()
