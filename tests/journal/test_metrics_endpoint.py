"""The worker's health port: probes answer, /metrics parses with prometheus_client and its counters move."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmworker.client import Client
from kvmworker.observability.metrics import BoundedProbe
from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.journal.effects import EffectsHandler

pytestmark = pytest.mark.broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, text = get(port, "/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def observed(amqp_url, tmp_path) -> Iterator[tuple[RunningWorker, int]]:
    port = free_port()
    effects = tmp_path / "effects"
    effects.mkdir()
    settings = Settings(
        host=unique("kvt-jm-"), broker_url=amqp_url, state_dir=tmp_path / "state", health_port=port,
        health_bind="127.0.0.1", libvirt_uri="test:///default",
    )  # fmt: skip
    running = start_worker(settings, extra_handlers=[EffectsHandler(effects)])
    assert running.worker.connected.wait(15)
    yield running, port
    running.stop(timeout=10)


def test_liveness_and_readiness_answer_200_while_the_worker_consumes(observed):
    _, port = observed
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz") == (200, '{"status": "ok"}')
    assert get(port, "/nowhere")[0] == 404


def test_metrics_parse_and_the_command_counters_move_with_the_commands_sent(observed, amqp_url):
    running, port = observed
    ping = ("kvmworker_commands_total", (("code", "0"), ("command", "ping"), ("handler", "SystemHandler")))
    before = samples(port).get(ping, 0.0)
    msg_id = str(uuid.uuid4())
    with Client(amqp_url) as client:
        host = running.pipeline.host
        for _ in range(2):
            assert client.call(host, "SystemHandler", "ping").code == Code.OK
        first = client.call(host, "EffectsHandler", "bump", {"name": "m"}, msg_id=msg_id)
        assert client.call(host, "EffectsHandler", "bump", {"name": "m"}, msg_id=msg_id) == first
        assert client.call(host, "NoSuchHandler", "x").code == Code.UNKNOWN_HANDLER
    after = samples(port)
    assert after[ping] == before + 2
    assert after[("kvmworker_duplicates_total", (("how", "journal"),))] == 1
    assert after[("kvmworker_commands_total", (("code", "20002"), ("command", "unknown"), ("handler", "unknown")))] == 1
    bump_count = ("kvmworker_command_duration_seconds_count", (("command", "bump"), ("handler", "EffectsHandler")))
    assert after[bump_count] == 2
    assert after[("kvmworker_broker_connected", ())] == 1
    assert after[("kvmworker_commands_in_flight", ())] == 0
    assert after[("kvmworker_journal_bytes", ())] > 0
    assert after[("kvmworker_libvirt_connected", ())] == 1  # test:///default always answers


def test_the_health_port_closes_when_the_worker_stops(observed):
    running, port = observed
    running.stop(timeout=10)
    with pytest.raises(OSError):
        for _ in range(50):
            get(port, "/healthz")
            time.sleep(0.1)


def test_readiness_is_503_with_the_reason_while_the_broker_cannot_be_reached(tmp_path):
    port = free_port()
    settings = Settings(
        host=unique("kvt-jm-"), broker_url="amqp://guest:guest@127.0.0.1:1//", state_dir=tmp_path / "state",
        health_port=port, health_bind="127.0.0.1",
    )  # fmt: skip
    running = start_worker(settings)
    try:
        assert get(port, "/readyz") == (503, '{"status": "unavailable", "reason": "not consuming from the broker"}')
        assert get(port, "/healthz")[0] == 200  # alive: it keeps trying, a restart would not help
        assert samples(port)[("kvmworker_broker_connected", ())] == 0
    finally:
        running.stop(timeout=2)


def test_a_probe_that_hangs_counts_as_down_within_its_timeout_and_is_not_stacked():
    release = threading.Event()
    calls = []

    def hanging() -> bool:
        calls.append(1)
        release.wait(10)
        return True

    probe = BoundedProbe(hanging, timeout=0.2)
    started = time.monotonic()
    assert probe() is False
    assert probe() is False
    assert time.monotonic() - started < 2
    assert len(calls) == 1  # the second scrape did not start another call while the first hangs
    release.set()
    time.sleep(0.05)
    assert probe() is True
