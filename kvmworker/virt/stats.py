"""Per-VM figures from libvirt's bulk stats call, bounded in time, with a hung VM reported ``stale``.

libvirt's stats call can block forever (collectd#2037): a QEMU that does not answer its monitor (stopped,
swapped out, stuck in D state) holds the call that asked it, and a bulk call over all domains with it. So:

1. Domains that still have an earlier call hanging are ``stale`` at once; no second call piles up behind them.
2. One bulk ``domainListGetStats`` over the rest runs on its own thread, waited for half the bound.
3. If it does not come back, each of those domains gets its own call on its own thread, waited for the rest of
   the bound; whichever does not come back is ``stale`` and remembered as hanging until its call ends.

``VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`` is not used: with it libvirt answers for a busy domain with
partial figures that look like fresh ones; here a VM is either reported whole or marked stale. At most one
thread per hung domain (plus one hung bulk call) stays behind, whatever the scrape or command rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from kvmworker.virt.states import state_name

STATS_TIMEOUT_S = 3.0
STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)

Record = tuple[dict[str, Any], dict[str, str]]
"""libvirt's record of one domain, and its interfaces' MACs by target."""


class _Call:
    def __init__(self, fn: Callable[[], Any]):
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name="kvmworker-stats", daemon=True).start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # kept for the waiter
            self.error = exc
        self.done.set()


class StatsReader:
    """Reads figures for a list of domains within ``timeout`` seconds, whatever libvirt does."""

    def __init__(self, timeout: float = STATS_TIMEOUT_S):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._hanging: dict[str, _Call] = {}  # uuid → its own call, not yet back
        self._bulk: _Call | None = None  # a bulk call not yet back

    def read(self, conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            self._forget_finished()
            asked = [d for d in doms if d.UUIDString() not in self._hanging]
            bulk_free = self._bulk is None
        records: dict[str, Record] = {}
        if asked and bulk_free:
            records = self._bulk_read(conn, asked, time.monotonic() + self.timeout / 2)
        missing = [d for d in asked if d.UUIDString() not in records]
        if missing:
            records.update(self._one_by_one(conn, missing, deadline))
        return [figures(dom, *records[u]) if (u := dom.UUIDString()) in records else stale(dom) for dom in doms]

    def _forget_finished(self) -> None:
        self._hanging = {u: c for u, c in self._hanging.items() if not c.done.is_set()}
        if self._bulk is not None and self._bulk.done.is_set():
            self._bulk = None

    def _bulk_read(self, conn: libvirt.virConnect, doms: list[libvirt.virDomain], until: float) -> dict[str, Record]:
        call = _Call(lambda: _records(conn, doms))
        if not call.done.wait(max(0.0, until - time.monotonic())):
            with self._lock:
                self._bulk = call
            return {}
        if call.error is not None:
            return {}  # e.g. a domain undefined meanwhile: the calls one by one tell which
        return call.value

    def _one_by_one(
        self, conn: libvirt.virConnect, doms: list[libvirt.virDomain], deadline: float
    ) -> dict[str, Record]:
        calls = {dom.UUIDString(): _Call(lambda d=dom: _records(conn, [d])) for dom in doms}
        found: dict[str, Record] = {}
        for uuid, call in calls.items():
            if call.done.wait(max(0.0, deadline - time.monotonic())) and call.error is None:
                found.update(call.value)
            elif not call.done.is_set():
                with self._lock:
                    self._hanging[uuid] = call
        return found


def _records(conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for dom, record in conn.domainListGetStats(doms, STATS, 0):
        macs = _macs(dom) if record.get("net.count") else {}
        out[dom.UUIDString()] = (record, macs)
    return out


def _macs(dom: libvirt.virDomain) -> dict[str, str]:
    root = ET.fromstring(dom.XMLDesc(0))
    found = {}
    for nic in root.iterfind("devices/interface"):
        target, mac = nic.find("target"), nic.find("mac")
        if target is not None and mac is not None:
            found[target.get("dev", "")] = mac.get("address", "")
    return found


def figures(dom: libvirt.virDomain, record: dict[str, Any], macs: dict[str, str]) -> dict[str, Any]:
    memory: dict[str, Any] = {"actual_kib": record.get("balloon.current"), "rss_kib": record.get("balloon.rss")}
    if "balloon.available" in record:
        memory["balloon_kib"] = record["balloon.available"]
    return {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "state": state_name(record.get("state.state", libvirt.VIR_DOMAIN_NOSTATE)),
        "cpu_time_ns": record.get("cpu.time", 0),
        "vcpus": record.get("vcpu.current", 0),
        "memory": memory,
        "disks": [_disk(record, i) for i in range(record.get("block.count", 0))],
        "interfaces": [_nic(record, i, macs) for i in range(record.get("net.count", 0))],
        "stale": False,
    }


def _disk(record: dict[str, Any], i: int) -> dict[str, Any]:
    p = f"block.{i}."
    return {
        "target": record.get(p + "name"),
        **{key: record.get(p + key.replace("_", "."), 0) for key in ("rd_bytes", "wr_bytes", "rd_reqs", "wr_reqs")},
    }


def _nic(record: dict[str, Any], i: int, macs: dict[str, str]) -> dict[str, Any]:
    p = f"net.{i}."
    target = record.get(p + "name")
    return {"target": target, "mac": macs.get(target or ""), **{k: record.get(p + v, 0) for k, v in _NET.items()}}


_NET = {
    "rx_bytes": "rx.bytes",
    "tx_bytes": "tx.bytes",
    "rx_packets": "rx.pkts",
    "tx_packets": "tx.pkts",
    "rx_drop": "rx.drop",
    "tx_drop": "tx.drop",
}


def stale(dom: libvirt.virDomain) -> dict[str, Any]:
    """A VM whose figures did not come back in time: named, nothing measured."""
    return {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "state": None,
        "cpu_time_ns": None,
        "vcpus": None,
        "memory": {"actual_kib": None, "rss_kib": None},
        "disks": [],
        "interfaces": [],
        "stale": True,
    }
