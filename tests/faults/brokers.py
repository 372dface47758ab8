"""Private broker servers a fault test may stop and restart without disturbing anyone else's tests.

The shared RabbitMQ (5672) and Redis (6379) serve every other suite concurrently; these run on their own
ports, data directories and node name, started and stopped by the test that owns them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout} s")


class PrivateRabbit:
    """``rabbitmq-server`` as its own node (the Debian wrapper runs it as the rabbitmq user, hence the chown)."""

    def __init__(self, base: Path, name: str, port: int, config: str = "", advanced: str = "[]."):
        self.base, self.port = base, port
        self.node = f"{name}@localhost"
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "advanced.config").write_text(advanced + "\n")
        (base / "env.conf").write_text("")  # so that /etc/rabbitmq/rabbitmq-env.conf cannot override ours
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = {port}\nloopback_users = none\n{config}")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(base)], check=True)
        self.env = os.environ | {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(port + 20000),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "env.conf"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True)
        _wait(lambda: self._ctl("await_startup", "--timeout", "5").returncode == 0, 90, f"{self.node} did not start")
        _wait(lambda: _port_open(self.port), 30, f"{self.node} did not listen on {self.port}")

    def stop(self) -> None:
        self._ctl("stop")
        _wait(lambda: not _port_open(self.port), 30, f"{self.node} did not stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rabbitmqctl", "-q", "-n", self.node, *args], capture_output=True, text=True)

    def queue_depth(self, queue: str) -> int:
        out = self._ctl("list_queues", "name", "messages", "--no-table-headers").stdout
        return sum(int(n) for q, n in (line.split() for line in out.splitlines() if line.strip()) if q == queue)


class PrivateRedis:
    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        base.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        subprocess.run([*cmd, "--daemonize", "yes", "--dir", str(self.base)], check=True, capture_output=True)
        _wait(lambda: _port_open(self.port), 15, f"redis on {self.port} did not start")

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        _wait(lambda: not _port_open(self.port), 15, f"redis on {self.port} did not stop")


@contextmanager
def private_rabbit(name: str, port: int, config: str = "", advanced: str = "[].") -> Iterator[PrivateRabbit]:
    """A node in a directory of its own under /tmp (pytest's tmp dirs are closed to the rabbitmq user)."""
    base = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    node = PrivateRabbit(base, f"{name}-{os.getpid()}", port, config, advanced)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def private_redis(port: int) -> Iterator[PrivateRedis]:
    base = Path(tempfile.mkdtemp(prefix="kvt-redis-"))
    server = PrivateRedis(base, port)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def require_private_brokers() -> None:
    if os.geteuid() != 0:
        pytest.skip("private RabbitMQ nodes are started through the Debian wrapper, which needs root")
    for tool in ("rabbitmq-server", "rabbitmqctl", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install rabbitmq-server redis-server)")
