"""``VmHandler.migrate`` between two real workers, each on its own libvirtd (two session daemons of ``nobody``),
commanded through RabbitMQ by a plain-kombu orchestrator. Every test ends with the outcome table's row: where the
VM runs (exactly one host) and what is left of it on the other (nothing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from kvmworker.virt import migration
from tests.conftest import AMQP_URL, require_broker
from tests.support.processes import wait_for
from tests.vm.guest import CACHE_DIR, READY_LINE, GuestImage, guest_image
from tests.vm.private_libvirtd import missing_tools
from tests.vm.two_libvirtd import POWEROFF_LINE, Host, Orchestrator, TwoHosts, two_hosts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]
SLOW_MIB_S = 1
"""A bandwidth at which the guest's ~40 MiB of non-zero memory takes long enough to act while it moves."""


class Lab:
    """Two hosts, a worker on each (in this process, on RabbitMQ), and the orchestrator that commands them."""

    def __init__(self, hosts: TwoHosts, tmp: Path, amqp: str, image: GuestImage):
        self.hosts, self.tmp, self.amqp, self.image = hosts, tmp, amqp, image
        self.workers: dict[str, RunningWorker] = {}
        self.orchestrator = Orchestrator(amqp, [hosts.a.name, hosts.b.name])

    @property
    def a(self) -> Host:
        return self.hosts.a

    @property
    def b(self) -> Host:
        return self.hosts.b

    def settings(self, host: Host, **more: Any) -> Settings:
        return Settings(
            host=host.name,
            broker_url=self.amqp,
            libvirt_uri=host.uri,
            storage_dirs=[self.tmp, CACHE_DIR],
            state_dir=self.tmp / host.name,
            workers=4,
            migration_uri=self.hosts.migration_uri,
            migration_data_uri="tcp://127.0.0.1",
            **more,
        )

    def start(self, host: Host, **more: Any) -> None:
        running = start_worker(self.settings(host, **more))
        assert running.worker.connected.wait(30), f"the worker of {host.name} did not connect"
        self.workers[host.name] = running

    def guest(self, host: Host | None = None, *, ready: bool = True) -> str:
        return self.guests(1, host, ready=ready)[0]

    def guests(self, count: int, host: Host | None = None, *, ready: bool = True) -> list[str]:
        """``count`` test guests on ``host`` (A), booted side by side; ``ready``: each has said so (its acpid runs),
        else they are running, still booting."""
        names = [f"kvt-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for name in names:
            self.hosts.start_guest(host or self.a, name, self.image)
        for name in names:
            if ready:
                self.hosts.wait_for_line(name, READY_LINE)
        return names

    def call(self, host: Host, command: str, handler: str = "VmHandler", **data: Any) -> dict:
        return self.orchestrator.call(host.name, command, handler=handler, **data)

    def phase(self, host: Host, msg_id: str) -> str:
        return self.call(host, "result", handler="SystemHandler", msg_id=msg_id)["data"].get("phase") or ""

    def close(self) -> None:
        self.orchestrator.close()
        for host, running in self.workers.items():
            running.stop(30)
            delete_host_queue(self.amqp, host)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return guest_image()


@pytest.fixture
def lab(tmp_path: Path, image: GuestImage) -> Iterator[Lab]:
    amqp = require_broker("amqp", AMQP_URL)
    with two_hosts(f"kvt-m{uuid.uuid4().hex[:6]}") as hosts:
        made = Lab(hosts, tmp_path, amqp, image)
        try:
            yield made
        finally:
            made.close()


def runs_only_on(lab: Lab, name: str, host: Host) -> None:
    """The outcome table's check: running on ``host``, nothing of it (running, paused or defined) on the other."""
    other = lab.b if host is lab.a else lab.a
    where = lab.hosts.where(name)
    print(f"OUTCOME {name}: {where}")  # the outcome table's row, with -s
    assert where == {host.name: "running", other.name: None}


def test_a_guest_migrated_through_the_wire_runs_on_b_only_and_its_console_answers_there(lab: Lab) -> None:
    lab.start(lab.a)
    lab.start(lab.b)
    name = lab.guest()
    msg_id = lab.orchestrator.send(lab.a.name, "migrate", {"name": name, "destination": lab.b.name})
    reply = lab.orchestrator.reply(msg_id, 180)
    assert reply["code"] == 0, reply
    data = reply["data"]
    assert (data["name"], data["destination"]) == (name, lab.b.name)
    assert data["duration_s"] > 0 and data["transferred_bytes"] > 0
    assert isinstance(data["downtime_ms"], int) and data["downtime_ms"] >= 0
    runs_only_on(lab, name, lab.b)
    # B's worker now owns it: its power button reaches the guest, which answers on its serial console.
    assert lab.call(lab.b, "shutdown", name=name, timeout=60)["code"] == 0
    lab.hosts.wait_for_line(name, POWEROFF_LINE, timeout=30)
    # Each worker told its own side, the source's event carrying the command that caused it.
    orchestrator = lab.orchestrator
    assert wait_for(lambda: bool(orchestrator.drain(0.2) or orchestrator.events_of(lab.b.name, "vm.lifecycle")), 10)
    left = [e for e in orchestrator.events_of(lab.a.name, "vm.lifecycle", name) if e["reason"] == "migrated"]
    assert "stopped" in [e["state"] for e in left] and {e["msg_id"] for e in left} == {msg_id}, orchestrator.events
    on_b = orchestrator.events_of(lab.b.name, "vm.lifecycle", name)
    arrived = [e["state"] for e in on_b if e["reason"] == "migrated"]
    assert {"started", "resumed"} & set(arrived), orchestrator.events
    progress = orchestrator.events_of(lab.a.name, "operation.progress", msg_id)
    assert progress and all(e["msg_id"] == msg_id for e in progress), orchestrator.events
    assert lab.hosts.where(name) == {lab.a.name: None, lab.b.name: "shut off"}


def test_cancelling_a_throttled_migration_answers_30013_and_leaves_the_guest_on_a_only(lab: Lab) -> None:
    lab.start(lab.a)
    name = lab.guest()
    msg_id = lab.orchestrator.send(
        lab.a.name, "migrate", {"name": name, "destination": lab.b.name, "bandwidth_mib": SLOW_MIB_S}
    )
    assert wait_for(lambda: lab.phase(lab.a, msg_id).startswith("memory"), 60, interval=0.3), lab.phase(lab.a, msg_id)
    # The job's call lasts the whole migration on a connection of its own: commands meanwhile are not held up on
    # the worker's (libvirt 9.0's client can lose a call's wake-up behind a call in flight: 5 s).
    for _ in range(15):  # stats: a lookup per name, one right after the other, then the reading
        started = time.monotonic()
        assert lab.call(lab.a, "list")["code"] == 0 and lab.call(lab.a, "stats", names=[name] * 4)["code"] == 0
        assert time.monotonic() - started < 2.5
    cancel = lab.call(lab.a, "cancel", handler="SystemHandler", msg_id=msg_id)
    assert cancel["code"] == 0 and cancel["data"]["state"] == "cancelling", cancel
    reply = lab.orchestrator.reply(msg_id, 120)
    assert reply["code"] == Code.CANCELLED, reply
    assert reply["data"]["reason"] == "cancelled" and reply["data"]["state"] == "running"
    runs_only_on(lab, name, lab.a)


def test_a_destination_that_refuses_the_guest_answers_30012_and_it_still_runs_on_a_only(
    tmp_path: Path, image: GuestImage
) -> None:
    # B may take incoming migrations on two ports only, and something else holds both: B refuses the guest.
    with held_ports() as (first, last):
        conf = f"migration_port_min = {first}\nmigration_port_max = {last}\n"
        with two_hosts(f"kvt-m{uuid.uuid4().hex[:6]}", b_qemu_conf=conf) as hosts:
            lab = Lab(hosts, tmp_path, require_broker("amqp", AMQP_URL), image)
            try:
                lab.start(lab.a)
                name = lab.guest()
                reply = lab.call(lab.a, "migrate", name=name, destination=lab.b.name)
                assert reply["code"] == Code.MIGRATION_FAILED and reply["msg"] == "虚拟机迁移失败", reply
                assert reply["data"]["reason"] == "failed" and reply["data"]["state"] == "running", reply
                assert "port" in reply["data"]["detail"], reply
                runs_only_on(lab, name, lab.a)
            finally:
                lab.close()


@contextmanager
def held_ports() -> Iterator[tuple[int, int]]:
    """Two consecutive ports of 127.0.0.1, listened on until the block ends."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        held = [socket.socket(), socket.socket()]
        try:
            for offset, sock in enumerate(held):
                sock.bind(("127.0.0.1", first + offset))
                sock.listen()
        except OSError:
            for sock in held:
                sock.close()
            continue
        try:
            yield first, first + 1
        finally:
            for sock in held:
                sock.close()
        return
    raise AssertionError("no two consecutive free ports")


def test_a_migration_whose_destination_stops_receiving_is_aborted_by_the_progress_timeout(lab: Lab) -> None:
    lab.start(lab.a, migration_progress_timeout=4.0)
    name = lab.guest()
    msg_id = lab.orchestrator.send(
        lab.a.name, "migrate", {"name": name, "destination": lab.b.name, "bandwidth_mib": SLOW_MIB_S}
    )
    assert wait_for(lambda: lab.phase(lab.a, msg_id).startswith("memory"), 60, interval=0.3), lab.phase(lab.a, msg_id)
    incoming = lab.b.daemon.qemu_pid(name)
    os.kill(incoming, signal.SIGSTOP)  # B's QEMU stops reading: nothing more leaves A
    try:
        assert wait_for(lambda: lab.phase(lab.a, msg_id).startswith("aborting"), 60, interval=0.3)
        assert lab.phase(lab.a, msg_id) == "aborting: no progress"
    finally:
        # B's libvirtd can only end the incoming QEMU's side (and answer A's libvirtd) once it runs again.
        with_pid_gone_or_continued(incoming)
    reply = lab.orchestrator.reply(msg_id, 120)
    assert reply["code"] == Code.MIGRATION_FAILED, reply
    assert reply["data"]["reason"] == "no progress", reply
    print(f"CLEANED {reply['data']['cleaned']}")
    runs_only_on(lab, name, lab.a)


def with_pid_gone_or_continued(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return


def test_three_migrations_at_once_with_max_migrations_2_the_third_waits_its_turn(lab: Lab) -> None:
    lab.start(lab.a, max_migrations=2)
    names = lab.guests(3)
    sent = [
        lab.orchestrator.send(lab.a.name, "migrate", {"name": n, "destination": lab.b.name, "bandwidth_mib": 1})
        for n in names
    ]

    def phases() -> list[str]:
        return [lab.phase(lab.a, m) for m in sent]

    assert wait_for(lambda: sum(p.startswith("waiting") for p in phases()) == 1, 60, interval=0.3), phases()
    assert wait_for(lambda: sum(p.startswith(("setup", "memory")) for p in phases()) == 2, 60, interval=0.3)
    waiting = next(m for m, p in zip(sent, phases(), strict=True) if p.startswith("waiting"))
    listed = lab.call(lab.a, "operations", handler="SystemHandler")["data"]["operations"]
    assert next(op["phase"] for op in listed if op["msg_id"] == waiting).startswith("waiting")
    first = next(m for m in sent if m != waiting)
    assert lab.call(lab.a, "cancel", handler="SystemHandler", msg_id=first)["code"] == 0
    assert lab.orchestrator.reply(first, 120)["code"] == Code.CANCELLED
    assert wait_for(lambda: not lab.phase(lab.a, waiting).startswith("waiting"), 60, interval=0.3)  # its turn came
    for msg_id in sent:
        lab.call(lab.a, "cancel", handler="SystemHandler", msg_id=msg_id)
    assert [lab.orchestrator.reply(m, 120)["code"] for m in sent] == [Code.CANCELLED] * 3
    for name in names:
        runs_only_on(lab, name, lab.a)


def test_a_source_worker_killed_mid_migration_settles_it_when_restarted_and_answers_from_the_journal(
    lab: Lab, tmp_path: Path
) -> None:
    settings = lab.settings(lab.a)
    args = [sys.executable, "-m", "kvmworker", "worker", "--host", lab.a.name, "--broker", lab.amqp]
    args += ["--libvirt-uri", lab.a.uri, "--state-dir", str(settings.state_dir), "--workers", "4"]
    args += ["--storage-dirs", str(tmp_path), "--storage-dirs", str(CACHE_DIR)]
    args += ["--migration-uri", settings.migration_uri, "--migration-data-uri", "tcp://127.0.0.1"]
    log = (tmp_path / "worker.log").open("w")
    first = subprocess.Popen(args, stdout=log, stderr=log)
    second = None
    try:
        assert lab.call(lab.a, "ping", handler="SystemHandler")["code"] == 0
        name = lab.guest()
        msg_id = lab.orchestrator.send(
            lab.a.name, "migrate", {"name": name, "destination": lab.b.name, "bandwidth_mib": SLOW_MIB_S}
        )
        assert wait_for(lambda: lab.phase(lab.a, msg_id).startswith("memory"), 60, interval=0.3)
        first.kill()
        first.wait(10)
        assert "Unbounded" in lab.a.virsh("domjobinfo", name)  # libvirtd goes on migrating without the worker
        second = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            reply = lab.orchestrator.reply(msg_id, 150)  # the redelivered command, answered from the journal
        except AssertionError as exc:  # what the restarted worker said, for whoever reads the failure
            tail = (tmp_path / "worker.log").read_text()[-6000:]
            raise AssertionError(f"{exc}; the worker's log ends:\n{tail}") from None
        assert reply["code"] == Code.MIGRATION_FAILED, reply
        assert reply["data"]["reason"] == "interrupted", reply
        runs_only_on(lab, name, lab.a)
        assert lab.call(lab.a, "result", handler="SystemHandler", msg_id=msg_id)["code"] == Code.MIGRATION_FAILED
        done = lab.orchestrator.events_of(lab.a.name, "operation.done", msg_id)
        assert [(e["state"], e["data"]["reason"]) for e in done] == [("failed", "interrupted")], lab.orchestrator.events
        assert "migrate interrupted by a worker stop, settled" in (tmp_path / "worker.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        log.close()


def test_a_migration_not_done_within_its_timeout_is_aborted_and_the_guest_stays_on_a(lab: Lab) -> None:
    lab.start(lab.a)
    name = lab.guest()
    data = {"name": name, "destination": lab.b.name, "bandwidth_mib": SLOW_MIB_S, "timeout": 3}
    reply = lab.orchestrator.reply(lab.orchestrator.send(lab.a.name, "migrate", data), 120)
    assert reply["code"] == Code.MIGRATION_FAILED, reply
    assert reply["data"]["reason"] == "timeout: not done in 3 s", reply
    runs_only_on(lab, name, lab.a)


@pytest.mark.parametrize("leftover", ["paused", "running"])
def test_settling_a_failed_migration_removes_what_is_left_of_the_guest_on_b(lab: Lab, leftover: str) -> None:
    """The invariant's enforcement on its own, on both real daemons: B holds a copy of A's guest (the paused
    incoming domain a job can leave, or — never silently — one that runs) and libvirt reported a failure: the
    source is authoritative, B's copy is destroyed and undefined, and the reply would say so."""
    name = lab.guest(ready=False)  # libvirt's states are what counts here, not what the guest runs
    source, dest = lab.a.connect(), lab.b.connect()
    try:
        dom = source.lookupByName(name)
        copy = dest.defineXML(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        copy.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if leftover == "paused" else 0)
        assert lab.hosts.where(name)[lab.b.name] == leftover
        failure = libvirt.libvirtError("the job failed")
        outcome = migration.settle(dom, dest, failure)
        assert (outcome.on, outcome.source_state) == ("source", "running")
        assert outcome.cleaned == ["destroyed on the destination", "undefined on the destination"]
    finally:
        source.close()
        dest.close()
    runs_only_on(lab, name, lab.a)


def _userfaultfd_for_nobody() -> bool:
    return Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "1"


@pytest.mark.skipif(
    not _userfaultfd_for_nobody(),
    reason="post-copy needs userfaultfd in the destination's QEMU, which runs as nobody here, and "
    "vm.unprivileged_userfaultfd is 0 (QEMU answers 'Postcopy is not supported')",
)
def test_with_postcopy_a_migration_that_outlasts_its_timeout_is_switched_to_post_copy_and_completes_on_b(
    lab: Lab,
) -> None:
    lab.start(lab.a)
    name = lab.guest()
    data = {"name": name, "destination": lab.b.name, "bandwidth_mib": SLOW_MIB_S, "timeout": 3, "postcopy": True}
    reply = lab.orchestrator.reply(lab.orchestrator.send(lab.a.name, "migrate", data), 120)
    assert reply["code"] == 0, reply
    assert reply["data"]["postcopy"] is True, reply
    runs_only_on(lab, name, lab.b)
