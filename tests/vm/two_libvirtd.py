"""Two hosts on one machine for migration tests: two private session libvirtds of ``nobody``, A and B.

libvirt refuses to migrate between daemons with the same host UUID ("Attempt to migrate guest to the same
host"), so each gets its own ``host_uuid`` in its ``libvirtd.conf``. Root always gets the system daemon, so
the daemons run as ``nobody`` (tests/vm/private_libvirtd.py). Migration data goes over
``tcp://127.0.0.1:<free port>``; the destination's libvirt is reached through its unix socket.

The guest is the busybox test guest (tests/vm/guest.py) at 96 MiB, TCG; its serial console goes to a file
under a directory both daemons' QEMU (both ``nobody``) can write, opened in append mode so that the
destination's QEMU keeps what the source's wrote.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import libvirt
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding
from kombu.message import Message

from tests.vm.conftest import guest_xml
from tests.vm.guest import READY_LINE, GuestImage
from tests.vm.private_libvirtd import GROUP, USER, PrivateLibvirtd

"""The test guest's kernel and initramfs do not boot in 64 MiB (nothing on the console); 96 MiB as everywhere."""
POWEROFF_LINE = "KVMWORKER-GUEST-POWEROFF"


class Host:
    """One side: a private daemon with its own host UUID, and the host name a worker gives it."""

    def __init__(self, name: str, qemu_conf: str = "") -> None:
        self.name = name
        self.daemon = PrivateLibvirtd()
        if qemu_conf:  # more of the daemon's qemu.conf (read at start)
            with (self.daemon.home / ".config" / "libvirt" / "qemu.conf").open("a") as conf:
                conf.write(qemu_conf)
        config = self.daemon.home / ".config" / "libvirt" / "libvirtd.conf"
        config.write_text(f'host_uuid = "{uuid.uuid4()}"\n')
        subprocess.run(["chown", f"{USER}:{GROUP}", str(config)], check=True)

    @property
    def uri(self) -> str:
        return self.daemon.uri

    @property
    def socket(self) -> str:
        return f"{self.daemon.run}/libvirt/libvirt-sock"

    @property
    def peer_uri(self) -> str:
        """How the other daemon reaches this one (libvirt's peer-to-peer connection)."""
        return f"qemu+unix:///session?socket={self.socket}"

    def virsh(self, *args: str) -> str:
        return self.daemon.virsh(*args)

    def state(self, name: str) -> str | None:
        """``running``/``paused``/``shut off``…, or None when this host has no such domain at all."""
        done = subprocess.run(["virsh", "-c", self.uri, "domstate", name], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    def connect(self) -> libvirt.virConnect:
        return libvirt.open(self.uri)


class TwoHosts:
    """Hosts A and B, started; ``remove()`` ends both, with any QEMU they left."""

    def __init__(self, prefix: str, b_qemu_conf: str = "") -> None:
        self.a = Host(f"{prefix}-a")
        self.b = Host(f"{prefix}-b", b_qemu_conf)
        self.shared = Path(self.a.daemon.root) / "shared"  # serial logs, readable by the test, written by nobody
        self.shared.mkdir()
        subprocess.run(["chown", f"{USER}:{GROUP}", str(self.shared)], check=True)

    def start(self) -> None:
        self.a.daemon.start()
        self.b.daemon.start()

    def remove(self) -> None:
        for host in (self.b, self.a):
            try:
                host.daemon.remove()
            except Exception:  # a domain vanished under its cleanup (a migration ending): stop the daemon first
                if host.daemon.process is not None and host.daemon.process.poll() is None:
                    host.daemon.process.kill()
                    host.daemon.process.wait(10)
                host.daemon.remove()  # now its QEMU processes (by pid file) and its directory

    def remove_domains(self) -> None:
        for host in self.hosts.values():
            host.daemon._remove_domains()

    @property
    def hosts(self) -> dict[str, Host]:
        return {self.a.name: self.a, self.b.name: self.b}

    @property
    def migration_uri(self) -> str:
        """``--migration-uri`` of the workers here: ``{host}`` picks the daemon's socket through a link named after
        the host, as ``qemu+tls://{host}/system`` picks a machine in production."""
        links = self.shared / "sockets"
        if not links.exists():
            links.mkdir()
            for host in self.hosts.values():
                (links / f"{host.name}.sock").symlink_to(host.socket)
        return f"qemu+unix:///session?socket={links}/{{host}}.sock"

    def serial_log(self, name: str) -> Path:
        return self.shared / f"{name}-serial.log"

    def guest_xml(self, name: str, image: GuestImage, interface: str = "") -> str:
        return guest_xml(name, image, serial=self.serial_log(name), devices=interface)

    def run_guest(self, host: Host, name: str, image: GuestImage, interface: str = "") -> None:
        """Define and start the test guest on ``host``, waiting until it says it is ready."""
        self.start_guest(host, name, image, interface)
        self.wait_for_line(name, READY_LINE)

    def start_guest(self, host: Host, name: str, image: GuestImage, interface: str = "") -> None:
        """Define and start the test guest on ``host``; it boots meanwhile (``wait_for_line(name, READY_LINE)``)."""
        conn = host.connect()
        try:
            conn.defineXML(self.guest_xml(name, image, interface)).create()
        finally:
            conn.close()

    def wait_for_line(self, name: str, line: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        path = self.serial_log(name)
        while time.monotonic() < deadline:
            if path.exists() and line in path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} printed no {line!r} in {timeout} s")

    def where(self, name: str) -> dict[str, str | None]:
        """The outcome table's row: the domain's state on each host (None: not defined there)."""
        return {h.name: h.state(name) for h in self.hosts.values()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def two_hosts(prefix: str, b_qemu_conf: str = "") -> Iterator[TwoHosts]:
    hosts = TwoHosts(prefix, b_qemu_conf)
    try:
        hosts.start()
        yield hosts
    finally:
        hosts.remove()


class Orchestrator:
    """A foreign orchestrator in plain kombu, as INTERFACE §6/§7 describe the wire: commands to the host's queue on
    the ``kvmworker`` exchange, replies on its own queue, every event of the given hosts on ``kvmworker.events``.

    Single-threaded: replies and events are collected while it waits (``drain``).
    """

    def __init__(self, url: str, hosts: list[str]) -> None:
        self.connection = Connection(url, connect_timeout=5)
        self.channel = self.connection.channel()
        self.exchange = Exchange("kvmworker", type="direct", durable=True)
        self.reply_name = f"kvt.reply.{uuid.uuid4().hex}"
        replies = Queue(self.reply_name, routing_key=self.reply_name, exclusive=True, auto_delete=True)
        events_exchange = Exchange("kvmworker.events", type="topic", durable=True)
        events = Queue(
            f"kvt.events.{uuid.uuid4().hex}",
            exclusive=True,
            auto_delete=True,
            bindings=[binding(events_exchange, routing_key=f"{h}.#") for h in hosts],
        )
        self.replies: dict[str, dict] = {}
        self.events: list[dict] = []
        self.consumers = [
            Consumer(self.channel, queues=[replies], on_message=self._reply, accept=["application/json"]),
            Consumer(self.channel, queues=[events], on_message=self._event, accept=["application/json"]),
        ]
        for consumer in self.consumers:
            consumer.consume()

    def send(self, host: str, command: str, data: dict, handler: str = "VmHandler", timeout: float = 600) -> str:
        msg_id = str(uuid.uuid4())
        envelope = {"handler": handler, "command": command, "data": data, "msg_id": msg_id, "timeout": timeout}
        Producer(self.channel).publish(
            json.dumps(envelope).encode(),
            exchange=self.exchange,
            routing_key=host,
            declare=[Queue(f"kvmworker.{host}", self.exchange, routing_key=host, durable=True)],
            content_type="application/json",
            content_encoding="utf-8",
            reply_to=self.reply_name,
            correlation_id=msg_id,
            message_id=msg_id,
        )
        return msg_id

    def reply(self, msg_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            assert time.monotonic() < deadline, f"no reply to {msg_id} within {timeout:g} s"
            self.drain(0.5)
        return self.replies[msg_id]

    def call(self, host: str, command: str, handler: str = "VmHandler", timeout: float = 120.0, **data: object) -> dict:
        return self.reply(self.send(host, command, data, handler), timeout)

    def drain(self, seconds: float) -> None:
        with suppress(TimeoutError, socket.timeout):
            self.connection.drain_events(timeout=seconds)

    def events_of(self, host: str, kind: str, subject: str | None = None) -> list[dict]:
        return [
            e
            for e in self.events
            if e["host"] == host and f"{e['source']}.{e['kind']}" == kind and subject in (None, e["subject"])
        ]

    def close(self) -> None:
        for consumer in self.consumers:
            with suppress(Exception):
                consumer.cancel()
        self.connection.release()

    def _reply(self, message: Message) -> None:
        reply = json.loads(message.body)
        self.replies[message.properties["correlation_id"]] = reply
        message.ack()

    def _event(self, message: Message) -> None:
        self.events.append(json.loads(message.body))
        message.ack()
