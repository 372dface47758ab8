"""Migration time and downtime of the test guest through the worker, beside ``virsh migrate``, in the same run.

    .venv/bin/python bench/migrate.py [--rounds 5] [--broker amqp://guest:guest@localhost:5672//]

Two private session libvirtds of ``nobody`` (tests/vm/two_libvirtd.py, host UUIDs of their own), a worker on each
(in this process, on the broker) and a plain-kombu orchestrator; one 96 MiB TCG test guest goes back and forth.
Each round: the worker migrates it one way (``VmHandler.migrate``), then ``virsh migrate --live --p2p --persistent
--undefinesource`` the other way; the next round starts with virsh, so neither tool always has the same
direction. Same flags, same data URI (tcp://127.0.0.1). *time*: wall clock from sending the command (or starting
virsh) to its answer; *downtime*: libvirt's own figure for the completed job (``virsh domjobinfo --completed`` on
the destination), for both. Needs root (the daemons run as ``nobody``); everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test guest and the two-daemon harness

from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.vm.guest import CACHE_DIR, guest_image
from tests.vm.two_libvirtd import Host, Orchestrator, TwoHosts, two_hosts

DOWNTIME = re.compile(r"Total downtime:\s+(\d+)")


def downtime_ms(dest: Host, name: str) -> int | None:
    out = dest.virsh("domjobinfo", "--completed", "--keep-completed", name)
    found = DOWNTIME.search(out)
    if found is None:
        print(f"no downtime in: {out!r}", file=sys.stderr)
    return int(found.group(1)) if found else None


def by_worker(orchestrator: Orchestrator, src: Host, dest: Host, name: str) -> dict:
    started = time.monotonic()
    reply = orchestrator.reply(orchestrator.send(src.name, "migrate", {"name": name, "destination": dest.name}), 300)
    took = time.monotonic() - started
    assert reply["code"] == 0, reply
    data = reply["data"]
    reported = {"reported_downtime_ms": data["downtime_ms"], "reported_duration_s": data["duration_s"]}
    return {"time_s": took, "downtime_ms": downtime_ms(dest, name), **reported}


def by_virsh(src: Host, dest: Host, name: str) -> dict:
    flags = ["--live", "--p2p", "--persistent", "--undefinesource"]
    started = time.monotonic()
    src.virsh("migrate", *flags, name, dest.peer_uri, "tcp://127.0.0.1")
    took = time.monotonic() - started
    return {"time_s": took, "downtime_ms": downtime_ms(dest, name)}


def one_host_only(hosts: TwoHosts, name: str, on: Host) -> None:
    where = hosts.where(name)
    assert where == {h.name: ("running" if h is on else None) for h in hosts.hosts.values()}, where


def run(rounds: int, broker: str) -> dict:
    image = guest_image()
    results: dict[str, list[dict]] = {"worker": [], "virsh": []}
    with two_hosts(f"kvt-bm{uuid.uuid4().hex[:6]}") as hosts, tempfile.TemporaryDirectory() as tmp:
        workers = []
        for host in (hosts.a, hosts.b):
            settings = Settings(
                host=host.name, broker_url=broker, libvirt_uri=host.uri, storage_dirs=[Path(tmp), CACHE_DIR],
                state_dir=Path(tmp) / host.name, migration_uri=hosts.migration_uri,
                migration_data_uri="tcp://127.0.0.1",
            )  # fmt: skip
            workers.append(start_worker(settings))
            assert workers[-1].worker.connected.wait(30)
        orchestrator = Orchestrator(broker, [hosts.a.name, hosts.b.name])
        try:
            name = f"kvt-{uuid.uuid4().hex[:8]}"
            hosts.run_guest(hosts.a, name, image)
            here, there = hosts.a, hosts.b
            for i in range(rounds):
                order = ("worker", "virsh") if i % 2 == 0 else ("virsh", "worker")
                for tool in order:
                    if tool == "worker":
                        result = by_worker(orchestrator, here, there, name)
                    else:
                        result = by_virsh(here, there, name)
                    one_host_only(hosts, name, there)
                    results[tool].append({**result, "from": here.name[-1], "to": there.name[-1]})
                    here, there = there, here
        finally:
            orchestrator.close()
            for host, running in zip((hosts.a, hosts.b), workers, strict=False):
                running.stop(30)
                delete_host_queue(broker, host.name)
    return results


def summary(results: dict) -> str:
    lines = [f"{'':<22}{'worker':>12}{'virsh':>12}{'ratio':>8}"]
    for key, label in (("time_s", "time median (s)"), ("downtime_ms", "downtime median (ms)")):
        w = statistics.median(r[key] for r in results["worker"] if r[key] is not None)
        v = statistics.median(r[key] for r in results["virsh"] if r[key] is not None)
        lines.append(f"{label:<22}{w:>12.3f}{v:>12.3f}{(w / v if v else float('nan')):>8.2f}")
    for key, label in (("time_s", "time max (s)"), ("downtime_ms", "downtime max (ms)")):
        w = max(r[key] for r in results["worker"] if r[key] is not None)
        v = max(r[key] for r in results["virsh"] if r[key] is not None)
        lines.append(f"{label:<22}{w:>12.3f}{v:>12.3f}{(w / v if v else float('nan')):>8.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    results = run(args.rounds, args.broker)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"{args.rounds} rounds, each tool {len(results['worker'])} migrations of a 96 MiB TCG guest")
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
