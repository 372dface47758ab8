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


def test_a_command_interrupted_by_sigkill_is_redelivered_and_answered(amqp_client, tmp_path):
    host, counters = unique("kvt-kill-"), tmp_path / "counters"
    counters.mkdir()
    first = start_worker_process(host, tmp_path / "state", counters)
    second = None
    try:
        pending = amqp_client.submit(
            host, {"handler": "ProbeHandler", "command": "count", "data": {"name": "k1", "sleep": 2}}, timeout=30
        )
        assert wait_for(lambda: count_of(counters, "k1") == 1, 10), "the command never started"
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        assert not pending.future.done()
        second = start_worker_process(host, tmp_path / "state", counters)
        reply = amqp_client.wait(pending, 20)
        assert reply.code == Code.OK
        assert reply.data == {"counted": "k1"}
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        delete_host_queue(AMQP_URL, host)


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
