"""NetworkHandler on the real kernel beside the same work done with ``ip`` commands, in one run.

    .venv/bin/python bench/network.py [--rounds 200] [--creates 1000] [--networks 4000]

In a namespace of its own (veth ends play the NICs; their peers wait in a second namespace):

1. flat network create and delete latency, through ``Pipeline.handle`` with raw JSON, beside the
   ``ip`` sequence a script would run (add the bridge; tag it and bring it up; enslave the NIC);
2. ``--creates`` networks one after another, beside as many ``ip`` sequences;
3. ``list`` with ``--networks`` networks present, beside ``ip -j -d link show`` parsed, and beside
   one pyroute2 ``link('dump')`` (why the worker reads links with its own lean reader).

Targets: create p50 ≤ 1.5 ms and ≥ 3× faster than ``ip``; ``list`` of 4,000 networks ≤ 100 ms.
The worker's namespace holds only its own networks (``ip`` works in a second one). Deleting thousands
of devices takes the kernel minutes under its rtnl lock; they go in small groups at the end so that
other users of this machine never stall for long.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pyroute2 import IPRoute

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.network import NetworkHandler
from kvmworker.netplane.naming import bridge_name, network_alias
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.netplane.store import FILENAME, NetworkStore

TEARDOWN_GROUP_SIZE = 100


class Bench:
    """The worker's namespace holds only the worker's networks; the ``ip`` runs get a namespace of their own."""

    def __init__(self, worker_nics: int, ip_nics: int):
        tag = uuid.uuid4().hex[:6]
        self.ns, self.ip_ns, self.far = f"kvt-bench-{tag}", f"kvt-benchip-{tag}", f"kvt-benchfar-{tag}"
        for name in (self.ns, self.ip_ns, self.far):
            subprocess.run(["ip", "netns", "add", name], check=True)
        self.ipr = IPRoute(netns=self.ns, flags=0, groups=0)
        self.nics = self._nics(self.ipr, worker_nics, "p")
        self.ip_ipr = IPRoute(netns=self.ip_ns, flags=0, groups=0)
        self.ip_nics = self._nics(self.ip_ipr, ip_nics, "q")
        self.plane = Netplane(
            NetlinkPool(self.ns),
            NetworkStore(Path(tempfile.mkdtemp(prefix="kvt-bench-")) / FILENAME),
            PhysicalInterfaces(self.nics),
        )
        self.pipeline = Pipeline(HandlerRegistry([NetworkHandler(self.plane)]))
        self.call("list")  # opens the namespace's sockets and the store, as a running worker has them

    def _nics(self, ipr: IPRoute, count: int, peer_prefix: str) -> list[str]:
        """veth ends play the NICs; their peers wait in the far namespace."""
        nics = [f"eth{i}" for i in range(count)]
        for i, nic in enumerate(nics):
            ipr.link("add", ifname=nic, kind="veth", peer={"ifname": f"{peer_prefix}{i}", "net_ns_fd": self.far})
        return nics

    def call(self, command: str, **data: object) -> dict:
        body = json.dumps({"handler": "NetworkHandler", "command": command, "data": data}).encode()
        reply = self.pipeline.handle(Delivery(body=body, content_type="application/json"))
        assert reply.code == 0, reply
        return reply.data

    def worker_create(self, nic: str) -> str:
        network_id = str(uuid.uuid4())
        self.call("create", network_id=network_id, network_type="flat", physical_interface=nic)
        return network_id

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ip_ns, *args], check=True)

    def ip_create(self, nic: str) -> str:
        network_id = str(uuid.uuid4())
        bridge = bridge_name(network_id)
        self.ip("link", "add", bridge, "type", "bridge")
        self.ip("link", "set", bridge, "up", "alias", network_alias(network_id))
        self.ip("link", "set", nic, "master", bridge, "up")
        return bridge

    def ip_delete(self, nic: str, bridge: str) -> None:
        self.ip("link", "set", nic, "nomaster")
        self.ip("link", "del", bridge)

    def close(self) -> None:
        self.plane.close()
        for ipr in (self.ipr, self.ip_ipr):
            _delete_in_groups(ipr)
            ipr.close()
        for name in (self.ns, self.ip_ns, self.far):
            subprocess.run(["ip", "netns", "del", name], check=True)


def _delete_in_groups(ipr: IPRoute) -> None:
    """A device costs the kernel ~15 ms to unregister, under the rtnl lock that every netlink user on the
    machine needs: a few hundred at a time, with pauses, so that nobody else stalls for long."""
    links = [msg["index"] for msg in ipr.link("dump") if msg.get("ifname") != "lo"]
    groups = range(0, len(links), TEARDOWN_GROUP_SIZE)
    for group, start in enumerate(groups, 1):
        for index in links[start : start + TEARDOWN_GROUP_SIZE]:
            ipr.link("set", index=index, group=group)
    for group in range(1, len(groups) + 1):
        ipr.link("del", group=group)
        time.sleep(0.2)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"p50 {statistics.median(ordered):7.3f} ms   p90 {p90:7.3f} ms"


def latency(bench: Bench, rounds: int) -> None:
    """Creates alternate worker/ip, each on a NIC of its own; then the deletes alternate the same way
    (a delete leaves the kernel busy for a while, which would slow a create right after it)."""
    create: dict[str, list[float]] = {"worker": [], "ip": []}
    delete: dict[str, list[float]] = {"worker": [], "ip": []}
    made = []
    for worker_nic, ip_nic in zip(bench.nics[:rounds], bench.ip_nics[:rounds], strict=True):
        ms, network_id = timed(lambda n=worker_nic: bench.worker_create(n))
        create["worker"].append(ms)
        ms, bridge = timed(lambda n=ip_nic: bench.ip_create(n))
        create["ip"].append(ms)
        made.append((network_id, ip_nic, bridge))
    for network_id, ip_nic, bridge in made:
        delete["worker"].append(timed(lambda nid=network_id: bench.call("delete", network_id=nid))[0])
        delete["ip"].append(timed(lambda n=ip_nic, b=bridge: bench.ip_delete(n, b))[0])
    print(f"flat create, {rounds} of each")
    compare(create, "3 commands: add the bridge; tag it and bring it up; enslave the NIC and bring it up")
    print("  target: worker p50 <= 1.5 ms and ip/worker >= 3x")
    print("flat delete (release the NIC, delete the bridge: the kernel's wait for RCU dominates)")
    compare(delete, "2 commands")


def many_creates(bench: Bench, rounds: int, count: int) -> None:
    times: dict[str, list[float]] = {"worker": [], "ip": []}
    for nic in bench.nics[rounds : rounds + count]:
        times["worker"].append(timed(lambda n=nic: bench.worker_create(n))[0])
    for nic in bench.ip_nics[rounds : rounds + count]:
        times["ip"].append(timed(lambda n=nic: bench.ip_create(n))[0])
    print(f"{count} flat networks one after another")
    compare(times, "3 commands each", totals=True)


def compare(samples: dict[str, list[float]], ip_note: str, totals: bool = False) -> None:
    for who in ("worker", "ip"):
        total = f"total {sum(samples[who]) / 1000:6.2f} s   " if totals else ""
        note = f"   ({ip_note})" if who == "ip" else ""
        print(f"  {who:<7} {total}{summary(samples[who])}{note}")
    ratio = statistics.median(samples["ip"]) / statistics.median(samples["worker"])
    print(f"  ratio   ip/worker p50 = {ratio:.1f}x")


def listing(bench: Bench, rounds: int, networks: int, already: int) -> None:
    for nic in bench.nics[rounds + already : rounds + networks]:
        bench.worker_create(nic)
    links = len(bench.ipr.link("dump"))
    assert len(bench.call("list")["networks"]) == networks
    worker = [timed(lambda: bench.call("list"))[0] for _ in range(7)]
    ip_list = ["ip", "-n", bench.ns, "-j", "-d", "link", "show"]
    ip = [timed(lambda: json.loads(subprocess.check_output(ip_list)))[0] for _ in range(3)]
    full_decode = timed(lambda: bench.ipr.link("dump"))[0]
    print(f"list with {networks} networks ({links} links in the namespace)")
    print(f"  worker          {summary(worker)}   (target <= 100 ms)")
    print(f"  ip -j -d link   p50 {statistics.median(ip):7.1f} ms   ratio ip/worker = "
          f"{statistics.median(ip) / statistics.median(worker):.1f}x")  # fmt: skip
    print(f"  pyroute2 link('dump'), every attribute decoded: {full_decode:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--networks", type=int, default=4000)
    args = parser.parse_args(argv)
    networks = max(args.networks, args.creates)
    started = time.perf_counter()
    bench = Bench(worker_nics=args.rounds + networks, ip_nics=args.rounds + args.creates)
    print(f"setup: {len(bench.nics) + len(bench.ip_nics)} veth NICs in {time.perf_counter() - started:.1f} s")
    try:
        latency(bench, args.rounds)
        many_creates(bench, args.rounds, args.creates)
        listing(bench, args.rounds, networks, args.creates)
    finally:
        started = time.perf_counter()
        bench.close()
        print(f"teardown in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
