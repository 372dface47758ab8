"""The journal-flushing attack (issue 13, finding 5) on real RabbitMQ, through plain kombu: an attacker without keys
floods a keyed worker with large unsigned messages to push a captured signed command's msg_id out of a small
journal, then replays the capture. It must be answered from the journal, not run a second time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmworker.journal.store import JournalStore, journal_path
from kvmworker.protocol.codes import Code
from kvmworker.transport.connection import delete_host_queue
from kvmworker.transport.names import host_queue
from kvmworker.trust.signing import Signer
from tests.conftest import unique
from tests.journal.effects import runs_of
from tests.support.processes import WorkerProcess, wait_for
from tests.trust.conftest import signer_of, write_private, write_trusted
from tests.trust.wire import RawPublisher

pytestmark = [pytest.mark.broker, pytest.mark.slow]
FLOOD = 124
PAD = 250_000
JOURNAL_MB = 2


@pytest.fixture
def keyed(amqp_url: str, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Signer, RawPublisher]]:
    host, orchestrator, reply = unique("kvt-jflood-"), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    env = {
        "KVMWORKER_TRUSTED_KEYS_FILE": str(write_trusted(tmp_path / "trusted.json", orchestrator={"o1": orchestrator})),
        "KVMWORKER_KEYS_FILE": str(write_private(tmp_path / "reply-keys.json", "r1", {"r1": reply})),
        "KVMWORKER_JOURNAL_MAX_MB": str(JOURNAL_MB),
    }
    signer = signer_of(
        write_private(tmp_path / "orchestrator-keys.json", "o1", {"o1": orchestrator}),
        write_trusted(tmp_path / "client-trusted.json", hosts={host: {"r1": reply}}),
    )
    workers = WorkerProcess(amqp_url, tmp_path, host=host, env=env)
    raw = None
    try:
        workers.start()
        raw = RawPublisher(amqp_url, workers.host)
        # "worker ready" is printed before it declares its queue: what is published before would be dropped.
        host_queue(workers.host).bind(raw.conn.default_channel).declare()
        yield workers, signer, raw
    finally:
        if raw is not None:
            raw.close()
        workers.stop_all()
        delete_host_queue(amqp_url, workers.host)


def test_a_flood_of_large_unsigned_messages_cannot_make_a_captured_signed_command_run_twice(keyed):
    workers, signer, raw = keyed
    bump = {"handler": "EffectsHandler", "command": "bump", "data": {"name": "once"}}
    captured = raw.sign(raw.message(bump, timeout=3600), signer)  # what a sniffer of the broker keeps
    [first] = raw.wait(raw.send(captured), 30)
    assert first.body["code"] == Code.OK, workers.log()
    assert runs_of(workers.effects, "once") == 1

    junk = {"handler": "EffectsHandler", "command": "bump", "data": {"name": "junk", "pad": "x" * PAD}}
    flood = [raw.message(junk) for _ in range(FLOOD)]  # unsigned: refused 20004, with no reply
    for message in flood:
        raw.send(message)
    journal = JournalStore.open_existing(journal_path(workers.state))
    assert wait_for(lambda: all(journal.find(m.msg_id) for m in flood), 120), "the flood was not all journalled"
    journal.close()

    workers.stop_all()
    workers.start()  # a start prunes the journal to its limits: what the attacker was waiting for

    journal = JournalStore.open_existing(journal_path(workers.state))
    kept = journal.find(captured.msg_id)
    assert kept is not None and kept.state == "answered"
    assert kept.expires_at >= captured.headers["x-kvm-expires-at"]
    refused = journal.find(flood[-1].msg_id)
    assert (refused.state, refused.code) == ("refused", Code.UNAUTHENTICATED)
    assert len(json.dumps(refused.envelope)) <= 1100 and refused.envelope["raw_bytes"] > PAD
    assert journal.size_bytes() < JOURNAL_MB * 1024 * 1024
    journal.close()

    [again] = raw.wait(raw.send(captured), 30)  # the replay of the capture, byte for byte
    assert again.body == first.body  # the recorded reply, same run id: answered from the journal
    assert runs_of(workers.effects, "once") == 1
    journal = JournalStore.open_existing(journal_path(workers.state))
    assert [d["answered"] for d in journal.find(captured.msg_id).deliveries] == ["executed", "journal"]
    journal.close()
