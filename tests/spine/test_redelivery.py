"""A worker killed (SIGKILL) while a command runs: the command is redelivered to the restarted worker and answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from tests.conftest import AMQP_URL, broker_reachable, delete_host_queue, unique
from tests.support.handlers import count_of

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def start_worker_process(host: str, state: Path, counters: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.support.run_worker", "--host", host, "--broker", AMQP_URL]
    cmd += ["--state-dir", str(state), "--counter-dir", str(counters)]
    with (state.parent / f"{host}.log").open("a") as log:  # the worker's log, kept beside its state for a failure
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout.readline().strip() == "worker ready", f"the worker exited with {proc.wait()}"
    return proc


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def amqp_client():
    if not broker_reachable(AMQP_URL):
        pytest.fail(f"RabbitMQ at {AMQP_URL} is not reachable") if os.environ.get("CI") else pytest.skip(
            "RabbitMQ is not reachable (start it with .ci/services.sh)"
        )
    with Client(AMQP_URL) as client:
        yield client


class Workers:
    """Worker processes for one host, started again whenever the test wants."""

    def __init__(self, host: str, tmp_path: Path):
        self.host, self.state, self.counters = host, tmp_path / "state", tmp_path / "counters"
        self.counters.mkdir()
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        self.procs.append(start_worker_process(self.host, self.state, self.counters))
        return self.procs[-1]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        delete_host_queue(AMQP_URL, self.host)


@pytest.fixture
def workers(tmp_path):
    group = Workers(unique("kvt-kill-"), tmp_path)
    yield group
    group.stop_all()


def kill_mid_command(client: Client, workers: Workers, command: str, name: str):
    first = workers.start()
    pending = client.submit(
        workers.host, {"handler": "ProbeHandler", "command": command, "data": {"name": name, "sleep": 2}}, timeout=30
    )
    assert wait_for(lambda: count_of(workers.counters, name) == 1, 10), "the command never started"
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    assert not pending.future.done()
    workers.start()
    return client.wait(pending, 20)


def test_a_command_that_converges_is_run_again_after_a_sigkill_and_answered(amqp_client, workers):
    reply = kill_mid_command(amqp_client, workers, "converge", "c1")
    assert (reply.code, reply.data) == (Code.OK, {"converged": "c1"})
    assert count_of(workers.counters, "c1") == 2


def test_a_command_that_may_not_be_repeated_is_answered_minus_one_and_not_run_again(amqp_client, workers):
    reply = kill_mid_command(amqp_client, workers, "count", "k1")
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert reply.data["state"] == "interrupted"
    assert count_of(workers.counters, "k1") == 1


def test_a_message_that_kills_the_worker_every_time_is_answered_after_three_attempts(amqp_client, workers):
    proc = workers.start()
    body = {"handler": "ProbeHandler", "command": "crash", "data": {"name": "p1"}}
    pending = amqp_client.submit(workers.host, body, timeout=60)
    for _ in range(3):
        assert proc.wait(20) == -signal.SIGKILL
        proc = workers.start()
    reply = amqp_client.wait(pending, 20)
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert "3 times" in reply.data["detail"]
    assert count_of(workers.counters, "p1") == 3
    assert amqp_client.call(workers.host, "SystemHandler", "ping", timeout=10).code == Code.OK


def test_sigterm_finishes_the_running_command_before_the_worker_exits(amqp_client, tmp_path):
    host, counters = unique("kvt-term-"), tmp_path / "counters"
    counters.mkdir()
    proc = start_worker_process(host, tmp_path / "state", counters)
    try:
        pending = amqp_client.submit(
            host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "t1", "sleep": 1}}, timeout=30
        )
        assert wait_for(lambda: count_of(counters, "t1") == 1, 10)
        proc.send_signal(signal.SIGTERM)
        assert amqp_client.wait(pending, 10).data == {"counted": "t1"}
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        delete_host_queue(AMQP_URL, host)
