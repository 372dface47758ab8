"""Exactly-once effects over real RabbitMQ: a worker process SIGKILLed before its ack, duplicates published at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.journal.store import JournalStore, journal_path
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.journal.effects import EffectsHandler, runs_of
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workers(amqp_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(amqp_url, tmp_path, host=unique("kvt-jr-"))
    yield w
    w.stop_all()


@pytest.fixture
def client(amqp_url: str) -> Iterator[Client]:
    with Client(amqp_url) as c:
        yield c


def bump(name: str, sleep: float = 0) -> Envelope:
    return Envelope(handler="EffectsHandler", command="bump", data={"name": name, "sleep": sleep}, msg_id=uuid.uuid4())


def test_a_message_redelivered_after_a_kill_between_reply_and_ack_is_answered_from_the_journal(workers, client):
    marker = workers.tmp / "recorded"
    first = workers.start("--pause-marker", str(marker))
    pending = client.submit(workers.host, bump("k1"), timeout=40)
    assert wait_for(marker.exists, 15), "the reply was never recorded"
    assert runs_of(workers.effects, "k1") == 1
    workers.kill(first)  # the reply is in the journal; it was never published, the message never acked
    assert not pending.future.done()
    workers.start()
    reply = client.wait(pending, 30)
    assert reply.code == Code.OK, reply
    assert reply.data["name"] == "k1"
    assert runs_of(workers.effects, "k1") == 1
    entry = JournalStore.open_existing(journal_path(workers.state)).find(pending.msg_id)
    assert entry.reply == reply.model_dump(mode="json")
    assert [(d["answered"], d["redelivered"]) for d in entry.deliveries] == [("executed", False), ("journal", True)]


def test_a_message_redelivered_after_a_kill_during_the_command_is_not_run_again(workers, client):
    first = workers.start()
    pending = client.submit(workers.host, bump("k2", sleep=30), timeout=40)
    assert wait_for(lambda: runs_of(workers.effects, "k2") == 1, 15), "the command never started"
    workers.kill(first)  # it took effect; whether it finished, nobody knows
    workers.start()
    reply = client.wait(pending, 30)
    assert reply.code == Code.UNKNOWN_OUTCOME
    assert reply.data["state"] == "interrupted"
    assert runs_of(workers.effects, "k2") == 1


def test_a_duplicate_published_twice_at_once_runs_once_and_both_callers_get_the_same_reply(amqp_url, client, tmp_path):
    effects = tmp_path / "effects"
    effects.mkdir()
    settings = Settings(host=unique("kvt-jd-"), broker_url=amqp_url, state_dir=tmp_path / "state", workers=8)
    running = start_worker(settings, extra_handlers=[EffectsHandler(effects)])
    try:
        assert running.worker.connected.wait(15)
        envelope = bump("dup", sleep=0.5)
        envelope_id = str(envelope.msg_id)
        with Client(amqp_url) as other:
            pendings = [client.submit(settings.host, envelope), other.submit(settings.host, envelope)]
            replies = [client.wait(pendings[0], 20), other.wait(pendings[1], 20)]
    finally:
        running.stop(timeout=10)
    assert replies[0].code == Code.OK
    assert replies[0] == replies[1]
    assert runs_of(effects, "dup") == 1
    deliveries = JournalStore.open_existing(journal_path(settings.state_dir)).find(envelope_id).deliveries
    assert sorted(d["answered"] for d in deliveries) == ["executed", "waited"]
