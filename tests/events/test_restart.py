"""§7 across worker restarts (real worker processes on the shared RabbitMQ): the sequence is kept in the state
directory, so it continues after SIGTERM and after SIGKILL, and no number is ever handed out twice."""

from __future__ import annotations

import stat

import pytest

from kvmworker.client import Client
from kvmworker.events.buffer import FILE_NAME, EventBuffer
from tests.conftest import AMQP_URL, require_broker
from tests.events.conftest import seqs
from tests.support.processes import WorkerProcess, stop_process


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


@pytest.fixture
def worker(amqp, tmp_path):
    w = WorkerProcess(amqp, tmp_path)
    yield w
    w.stop_all()


def test_a_worker_stopped_and_started_again_says_offline_then_online_and_continues_the_sequence(amqp, worker, follow):
    with Client(amqp) as client:
        follower = follow(client, host=worker.host)
        worker.start()
        assert client.call(worker.host, "EventProbeHandler", "emit", {"count": 5}, timeout=30).code == 0
        assert stop_process(worker.current) == 0
        worker.start()
        assert client.call(worker.host, "EventProbeHandler", "emit", {"count": 3}, timeout=30).code == 0
        assert follower.wait_for(lambda f: len(f.events) == 11), [e.state for e in follower.events]
    states = [e.state for e in follower.events]
    assert states == ["online", *["ticked"] * 5, "offline", "online", *["ticked"] * 3]
    assert seqs(follower.events) == list(range(1, 12))
    assert follower.events[6].previous == "online" and follower.events[6].reason == "stopping"
    assert follower.gaps == []
    mode = stat.S_IMODE((worker.state / FILE_NAME).stat().st_mode)
    assert mode == 0o600, f"the sequence file is {oct(mode)}"


def test_a_worker_killed_with_sigkill_continues_its_sequence_and_never_reuses_a_number(amqp, worker, follow):
    with Client(amqp) as client:
        follower = follow(client, host=worker.host)
        worker.start()
        reply = client.call(worker.host, "EventProbeHandler", "emit", {"count": 200}, timeout=30)
        assert reply.code == 0 and reply.data["seqs"] == list(range(2, 202))
        worker.kill()  # some of the 200 are still in the buffer, maybe one confirmed but not yet struck off
        left = EventBuffer(worker.state / FILE_NAME)
        pending, next_seq = left.pending_count(), left.next_seq()
        left.close()
        assert pending > 0, "every event went out before the kill: nothing was left for the restart to send"
        assert next_seq == 202
        worker.start()
        reply = client.call(worker.host, "EventProbeHandler", "emit", {"count": 1}, timeout=30)
        assert reply.code == 0
        assert follower.wait_for(lambda f: len(f.of()) == 201), f"{len(follower.of())} of 201"
    numbers = seqs(follower.events)
    assert numbers == list(range(1, len(numbers) + 1)), "a number was skipped, repeated or reordered"
    assert follower.gaps == []
    again = next(e for e in follower.events if e.state == "online" and e.seq > 1)
    assert again.seq == 202, "the restarted worker did not number on from the last event of the killed one"
    assert reply.data["seqs"] == [203]
