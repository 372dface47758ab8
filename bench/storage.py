"""StorageHandler ``volumes`` of a pool of 1,000 volumes beside ``virsh vol-list``, same run, on qemu:///system.

    .venv/bin/python bench/storage.py [--volumes 1000] [--rounds 20] [--format raw|qcow2]

A directory pool of its own (``/var/lib/libvirt/images/kvt-bench-…``, transient) with ``--volumes`` tiny volumes
made through libvirt (``createXML``). Each round runs, interleaved so that the machine's noise falls on all alike:

- the worker's ``volumes`` through the real pipeline on the long-lived connection (JSON in, validation, reply);
- ``virsh vol-list`` (name and path: what a script that only wants names gets);
- ``virsh vol-list --details`` (adds type, capacity and allocation: the closest to what ``volumes`` answers);
- ``virsh pool-refresh`` then ``vol-list --details`` (``volumes`` refreshes the pool first; a script that wants
  the files put there behind libvirt's back must do the same);
- the bare in-process floor: ``listAllVolumes`` and ``info`` + ``path`` per volume on one open connection.

The pool, its volumes and its directory are removed afterwards, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable

import libvirt

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.storage import StorageHandler
from kvmworker.virt.connection import LibvirtConnection, ensure_event_loop
from kvmworker.virt.storage import StorageRules

URI = "qemu:///system"
IMAGES = "/var/lib/libvirt/images"


def pool_xml(name: str, path: str) -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"


def volume_xml(name: str, fmt: str) -> str:
    return (
        f"<volume><name>{name}</name><capacity unit='MiB'>1</capacity><allocation>0</allocation>"
        f"<target><format type='{fmt}'/></target></volume>"
    )


def fill(pool: libvirt.virStoragePool, count: int, fmt: str) -> None:
    started = time.perf_counter()
    for i in range(count):
        pool.createXML(volume_xml(f"kvt-vol-{i:04d}.{fmt}", fmt), 0)
    print(f"# created {count} {fmt} volumes through createXML in {time.perf_counter() - started:.1f} s")


def remove(conn: libvirt.virConnect, name: str, path: str) -> None:
    """Every volume, the pool, the directory: whatever of them exists."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        pool = None
    if pool is not None:
        try:
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
        finally:
            pool.destroy()  # transient: gone from libvirt with it
    shutil.rmtree(path, ignore_errors=True)


def worker_volumes(pool: str) -> Callable[[], int]:
    handler = StorageHandler(LibvirtConnection(URI), StorageRules([IMAGES], pool))
    pipeline = Pipeline(HandlerRegistry([handler]))
    body = json.dumps({"handler": "StorageHandler", "command": "volumes", "data": {"pool": pool}}).encode()

    def run() -> int:
        reply = pipeline.handle(Delivery(body=body, content_type="application/json"))
        assert reply.code == 0, reply
        return reply.data["count"]

    return run


def virsh(*args: str) -> Callable[[], int]:
    def run() -> int:
        out = subprocess.run(["virsh", "-c", URI, *args], check=True, capture_output=True, text=True).stdout
        return len(out.splitlines())

    return run


def refresh_then_details(pool: str) -> Callable[[], int]:
    refresh, details = virsh("pool-refresh", pool), virsh("vol-list", "--details", pool)

    def run() -> int:
        refresh()
        return details()

    return run


def bare(conn: libvirt.virConnect, pool: libvirt.virStoragePool) -> Callable[[], int]:
    def run() -> int:
        vols = pool.listAllVolumes(0)
        for vol in vols:
            vol.info()
            vol.path()
        return len(vols)

    return run


def measure(rows: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {label: [] for label in rows}
    for label, fn in rows.items():
        print(f"# {label}: {fn()} items/lines (warm-up)")
    for _ in range(rounds):
        for label, fn in rows.items():
            started = time.perf_counter()
            fn()
            samples[label].append((time.perf_counter() - started) * 1000)
    return samples


def report(samples: dict[str, list[float]], reference: str) -> None:
    base = statistics.median(samples[reference])
    for label, values in samples.items():
        p50, p99 = statistics.median(values), statistics.quantiles(values, n=100, method="inclusive")[98]
        print(f"{label:<44} p50 {p50:9.1f} ms  p99 {p99:9.1f} ms  | {p50 / base:5.2f}x {reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    args = parser.parse_args()
    ensure_event_loop()
    conn = libvirt.open(URI)
    name = f"kvt-bench-{uuid.uuid4().hex[:8]}"
    path = os.path.join(IMAGES, name)
    try:
        os.mkdir(path, 0o711)
        pool = conn.storagePoolCreateXML(pool_xml(name, path), 0)
        fill(pool, args.volumes, args.format)
        print(f"# pool {name}: {len(pool.listAllVolumes(0))} volumes; {len(conn.listAllDomains(0))} domains defined")
        rows = {
            "volumes (worker, pipeline, long-lived conn)": worker_volumes(name),
            "virsh vol-list": virsh("vol-list", name),
            "virsh vol-list --details": virsh("vol-list", "--details", name),
            "virsh pool-refresh + vol-list --details": refresh_then_details(name),
            "bare listAllVolumes + info/path (in-proc)": bare(conn, pool),
        }
        report(measure(rows, args.rounds), "virsh vol-list --details")
    finally:
        remove(conn, name, path)
        conn.close()


if __name__ == "__main__":
    main()
