"""deploy/systemd: the unit passes ``systemd-analyze verify``, and the real worker speaks sd_notify to it.

No systemd runs as PID 1 here, so the notify protocol is checked the way systemd sees it: the test owns
the datagram socket named by ``NOTIFY_SOCKET`` and reads what a ``kvmworker worker`` process sends.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.observability.sdnotify import Notifier
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker
from tests.deploy.conftest import ROOT, WheelVenv

UNIT = ROOT / "deploy" / "systemd" / "kvmworker.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "kvmworker.env"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
KVMWORKER = Path(sys.executable).parent / "kvmworker"
# generous: the worker imports libvirt and pyroute2 and restores its networks before it consumes
START_S = 60.0


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def verify(unit_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_file)], capture_output=True, text=True, timeout=120
    )


def installable_copy(tmp_path: Path, executable: Path, text: str | None = None) -> Path:
    """The unit as installed: ExecStart pointing at a real venv, the environment file in place."""
    env_file = tmp_path / "kvmworker.env"
    shutil.copy(ENV_EXAMPLE, env_file)
    lines = []
    for line in (text or UNIT.read_text()).splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={executable} worker"
        elif line.startswith("EnvironmentFile="):
            line = f"EnvironmentFile={env_file}"
        lines.append(line)
    copy = tmp_path / "kvmworker.service"
    copy.write_text("\n".join(lines) + "\n")
    return copy


@needs_systemd_analyze
def test_the_unit_pointed_at_the_wheel_venv_passes_systemd_analyze_verify(wheel_venv: WheelVenv, tmp_path):
    done = verify(installable_copy(tmp_path, wheel_venv.kvmworker))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_a_misspelled_key_so_the_check_above_can_fail(tmp_path):
    broken = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    done = verify(installable_copy(tmp_path, KVMWORKER, broken))
    assert "Unknown key 'WatchdogSecs'" in done.stdout + done.stderr


def test_the_unit_is_notify_type_with_a_watchdog_and_restarts_on_failure():
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split()[1:] == ["worker"]
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "kvmworker"  # the default --state-dir, /var/lib/kvmworker


def test_the_hardening_leaves_netlink_namespaces_and_libvirts_socket_and_no_private_mount_namespace():
    service = unit()["Service"]
    assert {"AF_NETLINK", "AF_UNIX"} <= set(service["RestrictAddressFamilies"].split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= set(service["CapabilityBoundingSet"].split())
    assert "net" in service["RestrictNamespaces"].split()
    assert service["NoNewPrivileges"] == "yes"
    # each of these gives the service its own mount namespace: /run/netns mounts would not reach the host
    private_mounts = {"ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "ReadOnlyPaths", "PrivateDevices"}
    assert private_mounts.isdisjoint(service)


# -- sd_notify from the real worker ------------------------------------------------------------


class NotifySocket:
    """The datagram socket systemd would own for the unit; collects what the worker sends."""

    def __init__(self) -> None:
        self.name = f"kvt-notify-{uuid.uuid4().hex[:8]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract: NOTIFY_SOCKET=@name, as systemd may hand out
        self.messages: list[str] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def start_worker(tmp_path: Path, notify: NotifySocket, broker: str, host: str) -> subprocess.Popen:
    env = os.environ | {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}  # fed every 0.5 s
    cmd = [str(KVMWORKER), "worker", "--host", host, "--broker", broker, "--state-dir", str(tmp_path / "state")]
    cmd += ["--libvirt-uri", "test:///default"]
    log = (tmp_path / "worker.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def index_of(messages: list[str], line: str, start: int = 0) -> int:
    return next((i for i, m in enumerate(messages) if i >= start and line in m.splitlines()), -1)


@pytest.mark.broker
def test_the_worker_sends_ready_once_consuming_then_watchdog_and_stopping_at_sigterm(notify_socket, tmp_path):
    broker = require_broker("amqp", AMQP_URL)
    host = f"kvt-notify-{uuid.uuid4().hex[:8]}"
    proc = start_worker(tmp_path, notify_socket, broker, host)
    try:
        ready = notify_socket.wait_for(lambda m: index_of(m, "READY=1") >= 0, START_S)
        assert ready, (notify_socket.messages, (tmp_path / "worker.log").read_text())
        at = index_of(notify_socket.messages, "READY=1")
        assert f"STATUS=consuming kvmworker.{host} on amqp://guest:**@" in notify_socket.messages[at]
        # the consuming loop feeds the watchdog again and again
        fed = notify_socket.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m[at + 1 :]) >= 2, 10)
        assert fed, notify_socket.messages
        proc.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for(lambda m: index_of(m, "STOPPING=1") >= 0, 30), notify_socket.messages
        assert proc.wait(30) == 0
    finally:
        stop(proc)
        delete_host_queue(broker, host)
    assert index_of(notify_socket.messages, "READY=1", at + 1) == -1  # once


def test_a_worker_whose_broker_is_down_is_not_ready_but_feeds_the_watchdog_and_says_why(notify_socket, tmp_path):
    proc = start_worker(tmp_path, notify_socket, "amqp://guest:guest@127.0.0.1:1//", "kvt-notify-down")
    try:
        fed = notify_socket.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m) >= 2, START_S)
        assert fed, (notify_socket.messages, (tmp_path / "worker.log").read_text())
        assert any(line.startswith("STATUS=not consuming:") for m in notify_socket.messages for line in m.split("\n"))
        assert index_of(notify_socket.messages, "READY=1") == -1
    finally:
        assert stop(proc) == 0


def test_without_notify_socket_nothing_is_sent_and_the_watchdog_is_off():
    notifier = Notifier.from_environment({})
    assert (notifier.enabled, notifier.watchdog_interval, notifier.notify("READY=1")) == (False, None, False)


def test_a_watchdog_meant_for_another_process_is_not_fed(notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(env).watchdog_interval is None
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environment(env).watchdog_interval == 0.5


def test_the_watchdog_is_fed_at_most_once_per_half_interval(notify_socket):
    now = [100.0]
    notifier = Notifier(notify_socket.address, watchdog_usec=2_000_000, clock=lambda: now[0])
    for t in (100.0, 100.5, 100.99, 101.0, 101.2, 102.5):
        now[0] = t
        notifier.alive()
    notify_socket.wait_for(lambda m: len(m) >= 4, 0.5)  # a fourth would be one too many
    assert notify_socket.messages == ["WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1"]  # at 100.0, 101.0, 102.5
