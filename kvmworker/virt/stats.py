"""Per-VM figures from libvirt's bulk stats call, bounded in time, with a hung VM reported ``stale``.

libvirt's stats call can block forever (collectd#2037): a QEMU that does not answer its monitor (stopped,
swapped out, stuck in D state) holds the call that asked it, and a bulk call over all domains with it. So:

1. Domains that still have an earlier call hanging are ``stale`` at once; no second call piles up behind them.
2. One bulk ``domainListGetStats`` over the rest runs on its own thread, waited for half the bound.
3. If it does not come back, each of those domains gets its own call on its own thread, waited for the rest of
   the bound; whichever does not come back is ``stale`` and remembered as hanging until its call ends.

The calls go over connections of the reader's own, never the worker's: libvirt's client (9.0, Debian 12) can
lose the wake-up of a call made while another call on the same connection is in flight (the thread polling the
socket misses ``g_main_loop_quit`` and sleeps until the next keepalive, 5 s), so a hung call would hold up any
command made meanwhile on its connection. A connection that a call hung on is given up (closed once that call
ends); a later read opens a fresh one, and after a bulk call hung each domain's own call has its own connection.
On a local driver (``test://``: nothing can hang, and a new connection would not see its domains) the caller's
connection is read.

``VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`` is not used: with it libvirt answers for a busy domain with
partial figures that look like fresh ones; here a VM is either reported whole or marked stale. At most two
threads per hung domain (its own call and the bulk call it held up) stay behind, whatever the scrape rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
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


class _Link:
    """A connection the reader's calls go over: its own (opened by the first call, closed once given up and
    idle) or, without an opener, the caller's (never closed here)."""

    def __init__(self, opener: Callable[[], libvirt.virConnect] | None, conn: libvirt.virConnect | None = None):
        self._opener = opener
        self._conn = conn
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # an opening that hangs holds up this link's calls, never give_up()
        self._calls = 0
        self._given_up = False

    def call(self, fn: Callable[[libvirt.virConnect], Any]) -> _Call:
        with self._lock:
            self._calls += 1
        return _Call(lambda: self._run(fn))

    def give_up(self) -> None:
        """No new call goes over this link; it closes when its last call is back."""
        with self._lock:
            self._given_up = True
            idle = self._calls == 0
        if idle:
            self._close()

    def _run(self, fn: Callable[[libvirt.virConnect], Any]) -> Any:
        try:
            return fn(self._open())
        finally:
            with self._lock:
                self._calls -= 1
                closing = self._given_up and self._calls == 0
            if closing:
                self._close()

    def _open(self) -> libvirt.virConnect:
        with self._opening:
            if self._conn is None:
                assert self._opener is not None
                self._conn = self._opener()
            return self._conn

    def _close(self) -> None:
        if self._opener is None:
            return  # the caller's connection
        with self._opening:
            conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(libvirt.libvirtError):
                conn.close()


class StatsReader:
    """Reads figures for a list of domains within ``timeout`` seconds, whatever libvirt does.

    ``opener`` opens a connection of the reader's own to the worker's libvirt; ``None`` reads on the connection
    each ``read`` is given (a local driver)."""

    def __init__(self, opener: Callable[[], libvirt.virConnect] | None = None, timeout: float = STATS_TIMEOUT_S):
        self.timeout = timeout
        self._opener = opener
        self._lock = threading.Lock()
        self._hanging: dict[str, _Call] = {}  # uuid → its own call, not yet back
        self._link: _Link | None = None  # the reader's connection while no call hung on it

    def read(self, conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            self._hanging = {u: c for u, c in self._hanging.items() if not c.done.is_set()}
            asked = [d for d in doms if d.UUIDString() not in self._hanging]
        records: dict[str, Record] = {}
        hung = False
        if asked:
            records, hung = self._bulk_read(conn, asked, time.monotonic() + self.timeout / 2)
        missing = [d for d in asked if d.UUIDString() not in records]
        if missing:
            records.update(self._one_by_one(conn, missing, deadline, hung))
        return [figures(dom, *records[u]) if (u := dom.UUIDString()) in records else stale(dom) for dom in doms]

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.give_up()

    def _current(self, conn: libvirt.virConnect) -> _Link:
        if self._opener is None:
            return _Link(None, conn)
        with self._lock:
            if self._link is None:
                self._link = _Link(self._opener)
            return self._link

    def _bulk_read(
        self, conn: libvirt.virConnect, doms: list[libvirt.virDomain], until: float
    ) -> tuple[dict[str, Record], bool]:
        """The records of ``doms`` in one call, and whether that call hung."""
        link = self._current(conn)
        call = link.call(lambda c: _records(c, _same_domains(c, conn, doms)))
        if not call.done.wait(max(0.0, until - time.monotonic())):
            with self._lock:
                if self._link is link:
                    self._link = None
            link.give_up()
            return {}, True
        if call.error is not None:
            return {}, False  # e.g. a domain undefined meanwhile: the calls one by one tell which
        return call.value, False

    def _one_by_one(
        self, conn: libvirt.virConnect, doms: list[libvirt.virDomain], deadline: float, fresh: bool
    ) -> dict[str, Record]:
        """Each domain's own call: over a connection of its own when ``fresh`` (a call hung: who else will?)."""
        calls = {}
        for dom in doms:
            link = _Link(self._opener) if fresh and self._opener is not None else self._current(conn)
            calls[dom.UUIDString()] = (link, link.call(lambda c, d=dom: _records(c, _same_domains(c, conn, [d]))))
            if link is not self._link:
                link.give_up()  # closed as soon as its one call is back
        found: dict[str, Record] = {}
        for uuid, (link, call) in calls.items():
            if call.done.wait(max(0.0, deadline - time.monotonic())) and call.error is None:
                found.update(call.value)
            elif not call.done.is_set():
                with self._lock:
                    self._hanging[uuid] = call
                    if self._link is link:
                        self._link = None
                link.give_up()
        return found


def _same_domains(
    mine: libvirt.virConnect, theirs: libvirt.virConnect, doms: list[libvirt.virDomain]
) -> list[libvirt.virDomain]:
    """``doms`` as domains of ``mine`` (libvirt's stats call takes domains of the connection it is made on)."""
    if mine is theirs:
        return doms
    if len(doms) == 1:
        return [mine.lookupByUUIDString(doms[0].UUIDString())]
    wanted = {d.UUIDString() for d in doms}
    return [d for d in mine.listAllDomains(0) if d.UUIDString() in wanted]


def _records(conn: libvirt.virConnect, doms: list[libvirt.virDomain]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    if not doms:
        return out
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
