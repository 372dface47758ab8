"""A worker killed (SIGKILL) while a command runs: the command is redelivered to the restarted worker and answered."""

from __future__ import annotations

import signal

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.handlers import count_of
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def amqp_client():
    with Client(require_broker("amqp", AMQP_URL)) as client:
        yield client


@pytest.fixture
def workers(tmp_path):
    group = WorkerProcess(AMQP_URL, tmp_path, host=unique("kvt-kill-"))
    yield group
    group.stop_all()
    delete_host_queue(AMQP_URL, group.host)


def kill_mid_command(client: Client, workers: WorkerProcess, command: str, name: str):
    first = workers.start()
    pending = client.submit(
        workers.host, {"handler": "ProbeHandler", "command": command, "data": {"name": name, "sleep": 2}}, timeout=30
    )
    assert wait_for(lambda: count_of(workers.effects, name) == 1, 10), "the command never started"
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    assert not pending.future.done()
    workers.start()
    return client.wait(pending, 20)


def test_a_command_that_converges_is_run_again_after_a_sigkill_and_answered(amqp_client, workers):
    reply = kill_mid_command(amqp_client, workers, "converge", "c1")
    assert (reply.code, reply.data) == (Code.OK, {"converged": "c1"})
    assert count_of(workers.effects, "c1") == 2


def test_a_command_that_may_not_be_repeated_is_answered_minus_one_and_not_run_again(amqp_client, workers):
    reply = kill_mid_command(amqp_client, workers, "count", "k1")
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert reply.data["state"] == "interrupted"
    assert count_of(workers.effects, "k1") == 1


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
    assert count_of(workers.effects, "p1") == 3
    assert amqp_client.call(workers.host, "SystemHandler", "ping", timeout=10).code == Code.OK


def test_sigterm_finishes_the_running_command_before_the_worker_exits(amqp_client, workers):
    proc = workers.start()
    body = {"handler": "ProbeHandler", "command": "count", "data": {"name": "t1", "sleep": 1}}
    pending = amqp_client.submit(workers.host, body, timeout=30)
    assert wait_for(lambda: count_of(workers.effects, "t1") == 1, 10)
    proc.send_signal(signal.SIGTERM)
    assert amqp_client.wait(pending, 10).data == {"counted": "t1"}
    assert proc.wait(10) == 0
