"""VM events as an orchestrator sees them: ``kvmworker worker`` on RabbitMQ and the real libvirtd, commands sent
and events read with plain kombu."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Queue

from kvmworker.transport.connection import delete_host_queue
from kvmworker.transport.names import host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.spine.test_raw_messages import RawCaller
from tests.support.cli import KVMWORKER, ROOT, clean_env
from tests.support.processes import stop_process
from tests.vm.conftest import SYSTEM_URI, require_libvirtd, virsh

pytestmark = [pytest.mark.libvirtd, pytest.mark.broker, pytest.mark.slow]


class EventQueue:
    """A private queue bound to ``kvmworker.events`` for one host, read on a thread of its own."""

    def __init__(self, url: str, host: str):
        self._conn = Connection(url)
        exchange = Exchange("kvmworker.events", "topic", durable=True)
        queue = Queue(f"kvt.events.{uuid.uuid4().hex}", exchange, routing_key=f"{host}.#", exclusive=True)
        self._consumer = Consumer(self._conn.channel(), [queue], on_message=self._on, no_ack=True)
        self._consumer.consume()  # declared and bound now: nothing the worker publishes from here on is missed
        self._cond = threading.Condition()
        self.bodies: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _on(self, message) -> None:
        with self._cond:
            self.bodies.append((message.delivery_info["routing_key"], json.loads(message.body)))
            self._cond.notify_all()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn.drain_events(timeout=0.2)
            except TimeoutError:
                continue

    def wait_for(self, **fields) -> dict:
        deadline = time.monotonic() + 60
        with self._cond:
            while True:
                found = [b for _, b in self.bodies if all(b.get(k) == v for k, v in fields.items())]
                if found:
                    return found[0]
                assert time.monotonic() < deadline, f"no event {fields}: {self.bodies}"
                self._cond.wait(1)

    def lifecycle(self, name: str) -> list[tuple[str, str, str | None]]:
        with self._cond:
            return [(b["state"], b["reason"], b.get("msg_id")) for _, b in self.bodies if b["subject"] == name]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.release()


@pytest.fixture
def host() -> Iterator[str]:
    name = unique("kvt-vmev-")
    yield name
    delete_host_queue(AMQP_URL, name)


@pytest.fixture
def events(host: str) -> Iterator[EventQueue]:
    require_broker("amqp", AMQP_URL)
    queue = EventQueue(AMQP_URL, host)
    yield queue
    queue.close()


@pytest.fixture
def worker(host: str, events: EventQueue, tmp_path: Path) -> Iterator[subprocess.Popen]:
    require_libvirtd()
    args = ["worker", "--host", host, "--broker", AMQP_URL, "--state-dir", str(tmp_path / "state")]
    with (tmp_path / "worker.log").open("w") as log:
        proc = subprocess.Popen(
            [KVMWORKER, *args, "--libvirt-uri", SYSTEM_URI], stdout=log, stderr=log, env=clean_env(), cwd=ROOT
        )
    try:
        yield proc
    finally:
        stop_process(proc, 30)


def command(raw: RawCaller, command: str, msg_id: str, **data) -> dict:
    """Sent as an orchestrator sends it: declare the host's queue, publish, and after a timeout send the same
    envelope again (same msg_id: the worker's journal answers a copy without running it twice). Other test
    sessions on this shared broker delete ``kvmworker.kvt*`` queues when they end, taking a message along."""
    body = json.dumps({"handler": "VmHandler", "command": command, "data": data, "msg_id": msg_id})
    for _ in range(4):
        host_queue(raw.host)(raw.conn.channel()).declare()
        correlation_id = raw.send(body)
        with contextlib.suppress(KeyError):
            return raw.reply_for(correlation_id, timeout=10)
    raise AssertionError(f"no reply to {command} {msg_id}")


def test_a_command_sent_on_the_wire_is_told_with_its_msg_id_and_virsh_behind_its_back_without(
    worker, events, host, vms
):
    name = unique("kvt-")
    vms.append(name)
    online = events.wait_for(source="worker", state="online")
    assert isinstance(online["data"]["vms"], dict)
    raw = RawCaller(AMQP_URL, host)
    try:
        defined, undefined = str(uuid.uuid4()), str(uuid.uuid4())
        assert command(raw, "define", defined, name=name, memory_mib=32)["code"] == 0
        events.wait_for(subject=name, state="defined")
        virsh("start", name)
        virsh("destroy", name)
        events.wait_for(subject=name, state="stopped")
        assert command(raw, "undefine", undefined, name=name)["code"] == 0
        events.wait_for(subject=name, state="undefined")
    finally:
        raw.close()
    assert stop_process(worker, 30) == 0
    events.wait_for(source="worker", state="offline")

    told = [t for t in events.lifecycle(name) if t != ("shutdown", "host", None)]  # QEMU's report of destroy's SIGTERM
    assert told == [
        ("defined", "added", defined),
        ("resumed", "unpaused", None),
        ("started", "booted", None),
        ("stopped", "destroyed", None),
        ("undefined", "removed", undefined),
    ]
    keys = {key for key, body in events.bodies if body["subject"] == name}
    assert keys == {f"{host}.vm.lifecycle"}
    seqs = [body["seq"] for _, body in events.bodies]
    assert seqs == list(range(1, len(seqs) + 1))  # from the first event of this worker's state directory
