"""NetworkHandler on the real kernel beside the same work done with ``ip`` commands, in one run.

    .venv/bin/python bench/network.py [--rounds 200] [--creates 1000] [--networks 4000]

In a namespace of its own (veth ends play the NICs; their peers wait in a second namespace):

1. flat network create and delete latency, through ``Dispatcher.handle`` with raw JSON, beside the
   ``ip`` sequence a script would run (add the bridge; tag it and bring it up; enslave the NIC);
2. ``--creates`` networks one after another, beside as many ``ip`` sequences;
3. ``list`` with ``--networks`` networks present, beside ``ip -j -d link show`` parsed, and beside
   one pyroute2 ``link('dump')`` (why the worker reads links with its own lean reader).

Targets: create p50 ≤ 1.5 ms and ≥ 3× faster than ``ip``; ``list`` of 4,000 networks ≤ 100 ms.
Deleting thousands of devices holds the kernel's rtnl lock; the devices go in small groups at the
end so that other users of this machine are not stalled for long.
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
from kvmworker.dispatch.dispatcher import Dispatcher
from kvmworker.dispatch.request import Request
from kvmworker.handlers.naming import bridge_name, network_alias
from kvmworker.handlers.network import NetworkHandler
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.netplane.store import FILENAME, NetworkStore

TEARDOWN_GROUP_SIZE = 250


class Bench:
    def __init__(self, nics: int):
        tag = uuid.uuid4().hex[:6]
        self.ns, self.far = f"kvt-bench-{tag}", f"kvt-benchfar-{tag}"
        for name in (self.ns, self.far):
            subprocess.run(["ip", "netns", "add", name], check=True)
        self.ipr = IPRoute(netns=self.ns, flags=0, groups=0)
        self.nics = [f"eth{i}" for i in range(nics)]
        for i, nic in enumerate(self.nics):
            self.ipr.link("add", ifname=nic, kind="veth", peer={"ifname": f"p{i}", "net_ns_fd": self.far})
        self.plane = Netplane(
            NetlinkPool(self.ns),
            NetworkStore(Path(tempfile.mkdtemp(prefix="kvt-bench-")) / FILENAME),
            PhysicalInterfaces(self.nics),
        )
        self.dispatcher = Dispatcher(HandlerRegistry([NetworkHandler(self.plane)]))

    def call(self, command: str, **data: object) -> dict:
        body = json.dumps({"handler": "NetworkHandler", "command": command, "data": data}).encode()
        reply = self.dispatcher.handle(Request(body=body, content_type="application/json"))
        assert reply.code == 0, reply
        return reply.data

    def worker_create(self, nic: str) -> str:
        network_id = str(uuid.uuid4())
        self.call("create", network_id=network_id, network_type="flat", physical_interface=nic)
        return network_id

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True)

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
        """Devices go in groups of a few hundred (one rtnl hold each), then the two namespaces."""
        links = [msg["index"] for msg in self.ipr.link("dump") if msg.get("ifname") != "lo"]
        for start in range(0, len(links), TEARDOWN_GROUP_SIZE):
            group = 1 + start // TEARDOWN_GROUP_SIZE
            for index in links[start : start + TEARDOWN_GROUP_SIZE]:
                self.ipr.link("set", index=index, group=group)
        for group in range(1, 2 + len(links) // TEARDOWN_GROUP_SIZE):
            self.ipr.link("del", group=group)
            time.sleep(0.1)
        self.ipr.close()
        self.plane.close()
        for name in (self.ns, self.far):
            subprocess.run(["ip", "netns", "del", name], check=True)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"p50 {statistics.median(ordered):7.3f} ms   p90 {p90:7.3f} ms"


def latency(bench: Bench, rounds: int) -> float:
    """One NIC each, create then delete, alternating worker and ip so both see the same machine."""
    worker_nic, ip_nic = bench.nics[0], bench.nics[1]
    create = {"worker": [], "ip": []}
    delete = {"worker": [], "ip": []}
    for _ in range(rounds):
        ms, network_id = timed(lambda: bench.worker_create(worker_nic))
        create["worker"].append(ms)
        delete["worker"].append(timed(lambda nid=network_id: bench.call("delete", network_id=nid))[0])
        ms, bridge = timed(lambda: bench.ip_create(ip_nic))
        create["ip"].append(ms)
        delete["ip"].append(timed(lambda b=bridge: bench.ip_delete(ip_nic, b))[0])
    ratio = statistics.median(create["ip"]) / statistics.median(create["worker"])
    print(f"flat create, {rounds} rounds")
    print(f"  worker  {summary(create['worker'])}")
    print(f"  ip      {summary(create['ip'])}   (3 commands)")
    print(f"  ratio   ip/worker = {ratio:.1f}x   (target: worker p50 <= 1.5 ms, >= 3x)")
    print("flat delete (release the NIC, delete the bridge; the kernel's RCU wait dominates)")
    print(f"  worker  {summary(delete['worker'])}")
    print(f"  ip      {summary(delete['ip'])}   (2 commands)")
    return ratio


def many_creates(bench: Bench, count: int) -> None:
    worker_nics, ip_nics = bench.nics[2 : 2 + count], bench.nics[2 + count : 2 + 2 * count]
    worker = [timed(lambda n=nic: bench.worker_create(n))[0] for nic in worker_nics]
    ip = [timed(lambda n=nic: bench.ip_create(n))[0] for nic in ip_nics]
    print(f"{count} flat networks one after another")
    print(f"  worker  total {sum(worker) / 1000:6.2f} s   {summary(worker)}")
    print(f"  ip      total {sum(ip) / 1000:6.2f} s   {summary(ip)}")
    print(f"  ratio   ip/worker = {sum(ip) / sum(worker):.1f}x")


def listing(bench: Bench, networks: int, already: int) -> None:
    for nic in bench.nics[2 + 2 * already : 2 + already + networks]:
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
    bench = Bench(nics=2 + args.creates + networks)
    print(f"setup: {len(bench.nics)} veth NICs in {time.perf_counter() - started:.1f} s")
    try:
        latency(bench, args.rounds)
        many_creates(bench, args.creates)
        listing(bench, networks, args.creates)
    finally:
        started = time.perf_counter()
        bench.close()
        print(f"teardown in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
