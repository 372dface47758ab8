"""Several broker URLs separated by ``;`` (INTERFACE §4): worker, ``call`` and ``status`` fail over past a dead one.

The first URL points at a port where nothing listens; the second is the shared RabbitMQ. The 3-node cluster
losing nodes under load is tests/faults/test_cluster.py; this is the everyday path, in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker
from tests.support.cli import clean_env, kvmworker
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.broker
DEAD = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def urls() -> str:
    return f"{DEAD};{require_broker('amqp', AMQP_URL)}"


@pytest.fixture
def worker(urls, tmp_path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(urls, tmp_path)
    w.start()
    yield w
    w.stop_all()
    delete_host_queue(AMQP_URL, w.host)


def test_call_with_a_dead_node_first_in_the_list_is_answered_through_the_next_and_logs_no_password(urls, worker):
    done = kvmworker("call", worker.host, "SystemHandler", "ping", "--broker", urls, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"]["host"] == worker.host
    assert ":guest@" not in done.stderr + worker.log(), "a broker password reached a log"
    assert "consuming kvmworker." in worker.log() and ":5672/" in worker.log()


def test_status_over_a_list_of_urls_reports_the_broker_reachable_with_every_password_masked(urls, worker):
    done = kvmworker("status", "--host", worker.host, "--broker", urls, "--json", env=clean_env())
    report = json.loads(done.stdout)
    assert report["broker"]["reachable"] is True, report["broker"]
    assert report["broker"]["url"].count("guest:***@") == 2 and ":guest@" not in done.stdout + done.stderr
    assert report["queue"]["consumers"] == 1 and report["worker"]["answered"] is True, report
