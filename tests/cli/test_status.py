"""``kvmworker status`` against a real ``kvmworker worker`` process on RabbitMQ: with the worker running, after
it stopped (the local journal still read), with a network that drifted, and with the broker unreachable."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu import Connection

from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.cli import KVMWORKER, ROOT, clean_env, kvmworker
from tests.support.processes import stop_process

NIC = "ens224"


@dataclass
class WorkerProcess:
    host: str
    broker: str
    state_dir: Path
    proc: subprocess.Popen

    def status(self, *args: str) -> subprocess.CompletedProcess:
        return kvmworker(
            "status", "--host", self.host, "--broker", self.broker, "--state-dir", str(self.state_dir), *args
        )

    def call(self, handler: str, command: str, data: dict | None = None) -> subprocess.CompletedProcess:
        extra = ["--data", json.dumps(data)] if data is not None else []
        return kvmworker("call", self.host, handler, command, *extra, "--broker", self.broker, "--timeout", "20")

    def stop(self) -> None:
        stop_process(self.proc, 20)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of the test's own, where a veth end plays the physical NIC."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = unique("kvt-st-")
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", NIC, "type", "veth", "peer", "name", f"{NIC}p")
        yield name
    finally:
        ip("netns", "del", name)


@pytest.fixture
def worker(tmp_path: Path, namespace: str) -> Iterator[WorkerProcess]:
    broker = require_broker("amqp", AMQP_URL)
    host = unique("kvt-status-")
    state_dir = tmp_path / "state"
    argv = [KVMWORKER, "worker", "--host", host, "--broker", broker, "--state-dir", str(state_dir)]
    argv += ["--libvirt-uri", "test:///default", "--netns", namespace, "--physical-interfaces", NIC]
    argv += ["--storage-dirs", str(tmp_path)]
    with (tmp_path / "worker.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)
    running = WorkerProcess(host, broker, state_dir, proc)
    try:
        wait_until_answering(running, tmp_path / "worker.log")
        yield running
    finally:
        running.stop()
        delete_host_queue(broker, host)


def wait_until_answering(worker: WorkerProcess, log: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, log.read_text()
        if worker.status("--timeout", "2").returncode == 0:
            return
    pytest.fail(f"the worker did not answer within {within:g} s:\n{log.read_text()}")


def test_status_of_a_running_worker_shows_broker_queue_worker_libvirt_commands_and_networks(worker):
    done = worker.status("--json")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    report = json.loads(done.stdout)
    assert report["schema_version"] == 1 and report["host"] == worker.host and report["healthy"] is True
    assert report["broker"]["reachable"] is True and "guest:***@" in report["broker"]["url"]
    assert report["queue"]["name"] == f"kvmworker.{worker.host}" and report["queue"]["consumers"] == 1
    assert report["worker"]["answered"] is True and report["worker"]["version"]
    assert report["libvirt"]["available"] is True and report["libvirt"]["uri"] == "test:///default"
    assert report["commands"]["running"] == 0
    assert report["networks"] == {"total": 0, "ok": 0, "drift": [], "error": None}
    assert report["source"] == "worker"
    screen = worker.status()
    assert screen.returncode == 0
    for label in ("broker", "queue", "worker", "libvirt", "commands", "networks", "last errors"):
        assert label in screen.stdout


def test_status_lists_the_last_errors_the_worker_answered(worker):
    assert worker.call("NetworkHandler", "nope").returncode == 1
    report = json.loads(worker.status("--json").stdout)
    newest = report["last_errors"][0]
    assert (newest["handler"], newest["command"], newest["code"]) == ("NetworkHandler", "nope", 20003)
    assert "nope" in worker.status().stdout


def test_a_network_that_drifted_makes_status_exit_1_and_says_which(worker, namespace):
    network_id = str(uuid.uuid4())
    flat = {"network_id": network_id, "network_type": "flat", "physical_interface": NIC}
    created = worker.call("NetworkHandler", "create", flat)
    assert created.returncode == 0, created.stdout + created.stderr
    bridge = json.loads(created.stdout)["data"]["name"]
    ip("-n", namespace, "link", "del", bridge)
    done = worker.status("--json")
    assert done.returncode == 1, done.stdout
    networks = json.loads(done.stdout)["networks"]
    assert networks["total"] == 1 and networks["ok"] == 0
    assert networks["drift"][0]["network_id"] == network_id and networks["drift"][0]["drift"]
    assert "drift" in worker.status().stdout


def test_when_the_worker_is_gone_status_says_so_exits_2_and_still_reads_the_local_journal(worker):
    assert worker.call("NetworkHandler", "nope").returncode == 1
    worker.stop()
    done = worker.status("--json", "--timeout", "1")
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    assert report["worker"]["answered"] is False and "-1" in report["worker"]["error"]
    assert report["queue"]["consumers"] == 0
    assert report["source"].startswith("local journal at ")
    assert report["last_errors"][0]["command"] == "nope"
    screen = worker.status("--timeout", "1")
    assert screen.returncode == 2 and "not answering" in screen.stdout and "nope" in screen.stdout


def test_status_of_a_host_no_worker_ever_served_says_so_and_creates_no_queue():
    broker = require_broker("amqp", AMQP_URL)
    host = unique("kvt-never-")
    done = kvmworker("status", "--host", host, "--broker", broker, "--json")
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    assert report["queue"]["exists"] is False and "no queue" in report["worker"]["error"]
    with Connection(broker, connect_timeout=5) as conn, pytest.raises(Exception, match="NOT_FOUND"):
        conn.default_channel.queue_declare(queue=f"kvmworker.{host}", passive=True)


def test_with_the_broker_unreachable_status_exits_69_and_shows_what_it_could_not_reach(tmp_path):
    done = kvmworker("status", "--host", "kvt-h", "--broker", "amqp://guest:pw@127.0.0.1:1//", "--json")
    assert done.returncode == 69 and "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["broker"]["reachable"] is False and report["broker"]["error"]
    assert report["worker"]["answered"] is False and report["healthy"] is False


def test_status_on_the_default_memory_broker_gives_the_memory_hint():
    done = kvmworker("status", "--host", "kvt-h")
    assert done.returncode == 64 and "memory://" in done.stderr and "--url" in done.stderr
