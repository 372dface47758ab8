"""Private broker servers a fault test may stop and restart without disturbing anyone else's tests.

The shared RabbitMQ (5672) and Redis (6379) serve every other suite concurrently; these run on their own
ports, data directories and node name, started and stopped by the test that owns them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
        self.os_pid = 0
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
        self.launch()
        self.await_started()

    def launch(self) -> None:
        """Start the node and return at once (``await_started`` waits): nodes of a cluster boot side by side."""
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True)

    def await_started(self) -> None:
        _wait(lambda: self._ctl("await_startup", "--timeout", "5").returncode == 0, 90, f"{self.node} did not start")
        _wait(lambda: _port_open(self.port), 30, f"{self.node} did not listen on {self.port}")
        self.os_pid = int(self._ctl("eval", "os:getpid().").stdout.strip().strip('"'))

    def running(self) -> bool:
        return _port_open(self.port)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: no connection is closed, no peer is told."""
        os.kill(self.os_pid, signal.SIGKILL)
        _wait(lambda: not _port_open(self.port), 30, f"{self.node} still listens after SIGKILL")
        _wait(lambda: self._ctl("ping").returncode != 0, 30, f"{self.node} still answers after SIGKILL")

    def stop(self) -> None:
        self._ctl("stop")
        _wait(lambda: not _port_open(self.port), 30, f"{self.node} did not stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_app(self) -> None:
        """The RabbitMQ application stops (clients get a connection.close), the Erlang node stays."""
        self.ctl("stop_app")
        _wait(lambda: not _port_open(self.port), 30, f"{self.node} still listens after stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        _wait(lambda: _port_open(self.port), 60, f"{self.node} did not listen again after start_app")

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl`` on this node; a failure raises with what it said."""
        done = self._ctl(*args)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

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


class PrivateCluster:
    """Three (or more) private nodes joined into one cluster, with a vhost whose queues are quorum queues
    (``add_vhost --default-queue-type quorum``, as docs/deploy.md sets it up) and a user with a password."""

    VHOST = "kvt-cluster"
    USER, PASSWORD = "kvt", "kvt-cluster-secret"

    def __init__(self, nodes: list[PrivateRabbit]):
        self.nodes = nodes

    def form(self) -> None:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.await_started()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        first.ctl("add_vhost", self.VHOST, "--default-queue-type", "quorum")
        first.ctl("add_user", self.USER, self.PASSWORD)
        first.ctl("set_permissions", "-p", self.VHOST, self.USER, ".*", ".*", ".*")
        running = first.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
        assert running == str(len(self.nodes)), f"the cluster has {running} running nodes"

    def url(self, node: PrivateRabbit) -> str:
        return f"amqp://{self.USER}:{self.PASSWORD}@127.0.0.1:{node.port}/{self.VHOST}"

    def urls(self, *order: int) -> str:
        """The ``;``-separated failover list, starting with the nodes at ``order`` (the rest follow)."""
        rest = [i for i in range(len(self.nodes)) if i not in order]
        return ";".join(self.url(self.nodes[i]) for i in (*order, *rest))

    def all_up(self) -> None:
        """Bring back any node a test killed or stopped, and wait until the cluster has them all running."""
        for node in self.nodes:
            if not _port_open(node.port):
                if node._ctl("ping").returncode == 0:
                    node.start_app()
                else:
                    node.start()
        first = next(n for n in self.nodes if _port_open(n.port))
        _wait(
            lambda: first._ctl("eval", "length(rabbit_nodes:all_running()).").stdout.strip() == str(len(self.nodes)),
            60,
            "the cluster did not have all its nodes running again",
        )

    def node_of_consumer(self, queue: str) -> PrivateRabbit | None:
        """The node whose channel consumes ``queue`` (from the channel's Erlang pid), None if nobody consumes."""
        for node in self.nodes:
            if _port_open(node.port):
                out = node._ctl("list_consumers", "-p", self.VHOST, "queue_name", "channel_pid", "--no-table-headers")
                for line in out.stdout.splitlines():
                    name, _, pid = line.strip().partition("\t")
                    if name.strip() == queue:
                        return next((n for n in self.nodes if f"<{n.node}." in pid), None)
                return None
        return None

    def queue_depth(self, queue: str) -> int:
        node = next(n for n in self.nodes if _port_open(n.port))
        out = node.ctl("list_queues", "-p", self.VHOST, "name", "messages", "--no-table-headers")
        return sum(int(n) for q, n in (line.split() for line in out.splitlines() if line.strip()) if q == queue)

    def queue_type(self, queue: str) -> str:
        node = next(n for n in self.nodes if _port_open(n.port))
        out = node.ctl("list_queues", "-p", self.VHOST, "name", "type", "--no-table-headers")
        return next((t for q, t in (line.split() for line in out.splitlines() if line.strip()) if q == queue), "")


@contextmanager
def private_cluster(name: str, first_port: int, size: int = 3) -> Iterator[PrivateCluster]:
    """``size`` nodes on ``first_port``, ``first_port + 1``, ...; each in a directory of its own under /tmp."""
    bases = [Path(tempfile.mkdtemp(prefix=f"{name}{i}-")) for i in range(size)]
    nodes = [PrivateRabbit(b, f"{name}{i}-{os.getpid()}", first_port + i) for i, b in enumerate(bases)]
    cluster = PrivateCluster(nodes)
    try:
        cluster.form()
        yield cluster
    finally:
        for node in nodes:
            if node._ctl("ping").returncode == 0:
                node._ctl("stop")
            elif node.os_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.os_pid, signal.SIGKILL)
        for base in bases:
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
