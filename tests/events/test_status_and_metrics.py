"""For the operator: ``kvmworker status`` shows the last events (from the worker, or from its state directory when
it does not answer), and the worker's ``/metrics`` counts events, syncs, drops and what waits in the buffer."""

from __future__ import annotations

import json

import pytest

from kvmworker.client import Client
from tests.conftest import AMQP_URL, require_broker, unique
from tests.events.conftest import free_health_port, metrics_samples
from tests.support.cli import kvmworker
from tests.support.processes import WorkerProcess, stop_process, wait_for


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


def test_status_shows_the_last_events_from_the_worker_and_from_its_state_directory_once_it_stopped(amqp, tmp_path):
    worker = WorkerProcess(amqp, tmp_path)
    worker.start()
    try:
        with Client(amqp) as client:
            reply = client.call(worker.host, "EventProbeHandler", "emit", {"count": 3, "subject": "kvt-st"}, timeout=30)
        assert reply.code == 0
        status = [
            "status",
            "--host",
            worker.host,
            "--broker",
            amqp,
            "--state-dir",
            str(worker.state),
            "--timeout",
            "30",
        ]
        live = [*status, "--timeout", "30"]
        assert wait_for(lambda: json.loads(kvmworker(*live, "--json").stdout)["events"]["buffered"] == 0, 60)
        report = json.loads(kvmworker(*live, "--json").stdout)
        assert report["source"] == "worker"
        events = report["events"]
        assert (events["seq"], events["dropped"], events["connected"]) == (4, 0, True)
        assert [(e["seq"], e["source"], e["state"]) for e in events["last"]] == [
            (1, "worker", "online"), (2, "probe", "ticked"), (3, "probe", "ticked"), (4, "probe", "ticked"),
        ]  # fmt: skip
        screen = kvmworker(*live).stdout
        assert "seq 4, 0 buffered, 0 dropped, published" in screen
        assert "#4  probe.tick  kvt-st  ticked" in screen

        assert stop_process(worker.current) == 0
        after = kvmworker(*status, "--json", "--timeout", "2")
        report = json.loads(after.stdout)
        assert after.returncode == 2 and report["worker"]["answered"] is False
        assert report["events"]["seq"] == 5 and report["events"]["last"][-1]["state"] == "offline"
        assert report["events"]["connected"] is None  # read from the file: nobody to ask
    finally:
        worker.stop_all()


def test_the_worker_metrics_count_events_by_source_and_kind_syncs_and_what_is_buffered(amqp, start_event_worker):
    port = free_health_port()
    host = unique("kvt-evm-")
    worker = start_event_worker(amqp, host, health_port=port, health_bind="127.0.0.1")
    with Client(amqp) as client:
        assert client.call(host, "EventProbeHandler", "emit", {"count": 5}, timeout=30).code == 0
        assert client.call(host, "EventProbeHandler", "sync", {}, timeout=30).code == 0
    buffer = worker.probe.events.emitter.buffer
    assert wait_for(lambda: buffer.pending_count() == 0 and buffer.next_seq() == 8, 20)
    samples = metrics_samples(port)
    assert samples[("kvmworker_events_emitted_total", (("kind", "tick"), ("source", "probe")))] == 5
    assert samples[("kvmworker_events_emitted_total", (("kind", "state"), ("source", "worker")))] == 2
    assert samples[("kvmworker_events_syncs_total", ())] == 1
    assert wait_for(lambda: metrics_samples(port)[("kvmworker_events_published_total", ())] == 7, 10)
    assert samples[("kvmworker_events_buffered", ())] == 0
    assert samples[("kvmworker_events_seq", ())] == 7
    assert samples[("kvmworker_events_dropped_total", ())] == 0
    assert samples[("kvmworker_events_connected", ())] == 1
