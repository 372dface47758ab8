"""Attacks on the keys, made the way an attacker would, over real RabbitMQ and Redis with plain kombu.

The attacker owns hypervisor B: root there, so every file B's worker has (its trusted keys file, its own reply
key in its state directory). Host A must not run what B signs, and A's callers must not believe what B answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amqp.exceptions import ConsumerCancelled
from kombu import Connection, Consumer, Producer

from kvmworker.client import Client
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.names import host_queue
from kvmworker.trust.keys import REPLY_KEYS_NAME, Fixed, KeyFileError, PrivateKeys, load_private_keys
from kvmworker.trust.signing import Signer, WorkerKeys
from tests.conftest import AMQP_URL, unique
from tests.support.handlers import count_of
from tests.trust.conftest import write_trusted

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
COUNT = {"handler": "ProbeHandler", "command": "count", "data": {"name": "bus"}}
NO_REPLY_WAIT_S = 1.5


@pytest.fixture
def host_b(real_broker, worker_trust, tmp_path):
    """Hypervisor B's worker, deployed like A's: the same trusted file, its reply key made at its first start."""
    name = unique("kvt-host-b-")
    state = tmp_path / "state-b"
    running = start_worker(Settings(host=name, broker_url=real_broker, state_dir=state, trusted_keys_file=worker_trust))
    assert running.worker.connected.wait(15)
    yield name, state
    running.stop(timeout=10)


def loot(state: Path, trusted: Path) -> dict[str, object]:
    """Everything key-like on B: its private reply keys; its trusted file has public keys only."""
    with pytest.raises(KeyFileError):
        load_private_keys(trusted)  # no private key in it to steal
    return dict(load_private_keys(state / REPLY_KEYS_NAME).keys)


def test_nothing_on_host_b_can_sign_a_command_that_host_a_runs(keyed_worker, raw, host_b, worker_trust):
    _, state_b = host_b
    refused = []
    for key_id, key in loot(state_b, worker_trust).items():
        for claimed_id in (key_id, "o1"):  # under its own id, and under the orchestrator's
            forger = Signer(Fixed(PrivateKeys(claimed_id, {claimed_id: key})), Fixed(None))
            out = raw.sign(raw.message(COUNT), forger)
            assert raw.wait(raw.send(out), NO_REPLY_WAIT_S) == []
            refused.append(out.msg_id)
    assert count_of(keyed_worker.counters, "bus") == 0
    assert [keyed_worker.journal.store.find(m).reply["code"] for m in refused] == [20004] * len(refused)


def test_a_reply_made_on_host_b_is_not_believed_as_host_a_s(real_broker, host, signer, client_trust, host_b, reply_key):
    """B's root steals A's queue (no worker of A consumes it) and answers with B's key, as A and as itself."""
    name_b, state_b = host_b
    b_keys = load_private_keys(state_b / REPLY_KEYS_NAME)
    write_trusted(client_trust, hosts={host: {"r1": reply_key}, name_b: dict(b_keys.keys)})  # B is enrolled too
    forgers = [WorkerKeys(claimed, Fixed(None), Fixed(b_keys)) for claimed in (host, name_b)]
    # the control: the same path with A's own reply key is believed, so the refusals above are the key's doing
    forgers.append(WorkerKeys(host, Fixed(None), Fixed(PrivateKeys("r1", {"r1": reply_key}))))
    with Client(real_broker, signer=signer) as client, Connection(real_broker) as conn:
        results = [answer_as(conn, client, host, forger) for forger in forgers]
        host_queue(host).bind(conn).delete()
    assert [answered for answered, _ in results] == [True] * 3, "the attacker did not get to answer each call"
    assert [code for _, code in results] == [-1, -1, 0], "a reply signed on B (as A, or as B) was believed as A's"


def answer_as(conn: Connection, client: Client, host: str, forger: WorkerKeys) -> tuple[bool, int]:
    """One call to ``host``, answered by the attacker consuming its queue: (did it answer, the caller's code)."""
    producer = Producer(conn.channel())
    answered = []

    def answer(body, message):
        reply = json.dumps({"code": 0, "msg": "成功", "data": {"forged": True}}).encode()
        props = message.properties
        producer.publish(
            reply,
            routing_key=props["reply_to"],
            correlation_id=props["correlation_id"],
            message_id=props["message_id"],
            content_type="application/json",
            headers=forger.sign_reply(reply, props["correlation_id"], props["message_id"]),
        )
        answered.append(True)
        message.ack()

    for _ in range(3):  # other test sessions on this shared broker delete every kvt queue when they end
        try:
            with Consumer(conn.channel(), [host_queue(host)], callbacks=[answer]):
                pending = client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {}}, timeout=3)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)
                return bool(answered), client.wait(pending, 3).code
        except ConsumerCancelled:
            continue
    pytest.fail("the host's queue was deleted under the attacker three times")


def test_a_raw_unsigned_message_is_refused_20004_and_never_runs(keyed_worker, raw):
    out = raw.message(COUNT)
    assert raw.wait(raw.send(out), NO_REPLY_WAIT_S) == []
    assert keyed_worker.journal.store.find(out.msg_id).reply["code"] == 20004
    assert count_of(keyed_worker.counters, "bus") == 0


def test_a_key_removed_from_the_workers_file_is_refused_at_the_next_message_without_a_restart(
    keyed_worker, raw, signer, worker_trust, key_o1, key_o2
):
    write_trusted(worker_trust, orchestrator={"o1": key_o1, "o2": key_o2})
    first = raw.sign(raw.message(COUNT), signer)
    assert [r.body["code"] for r in raw.wait(raw.send(first))] == [0]
    write_trusted(worker_trust, orchestrator={"o2": key_o2})  # o1 retired (or stolen): removed from the file
    second = raw.sign(raw.message(COUNT), signer)
    assert raw.wait(raw.send(second), NO_REPLY_WAIT_S) == []
    entry = keyed_worker.journal.store.find(second.msg_id)
    assert entry.reply["code"] == 20004 and "unknown signing key id 'o1'" in entry.reply["data"]["detail"]
    assert count_of(keyed_worker.counters, "bus") == 1


# -- refused at start, as an operator starts it ---------------------------------------------


def start(tmp_path: Path, *args: str, broker: str = "memory://") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmworker", *args, "--broker", broker],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_given_an_all_zero_orchestrator_key_refuses_to_start(tmp_path):
    trusted = tmp_path / "trusted.json"
    trusted.write_text(json.dumps({"orchestrator": {"o1": "base64:" + "A" * 43 + "="}}))
    done = start(tmp_path, "worker", "--host", unique("kvt-"), "--state-dir", str(tmp_path / "s"),
                 "--trusted-keys-file", str(trusted))  # fmt: skip
    assert done.returncode == 64
    assert "weak Ed25519 public key" in done.stderr and "Traceback" not in done.stderr


def test_a_worker_given_an_all_zero_reply_key_refuses_to_start(tmp_path, worker_trust):
    zero = tmp_path / "reply.json"
    zero.write_text(json.dumps({"active": "r1", "keys": {"r1": "base64:" + "A" * 43 + "="}}))
    zero.chmod(0o600)
    done = start(tmp_path, "worker", "--host", unique("kvt-"), "--state-dir", str(tmp_path / "s"),
                 "--trusted-keys-file", str(worker_trust), "--keys-file", str(zero))  # fmt: skip
    assert done.returncode == 64 and "weak" in done.stderr


def test_kvmworker_call_refuses_a_private_key_file_others_can_read(tmp_path, keys_file, client_trust):
    keys_file.chmod(0o644)
    done = start(tmp_path, "call", "kvt-any", "SystemHandler", "ping", "--keys-file", str(keys_file),
                 "--trusted-keys-file", str(client_trust), broker=AMQP_URL)  # fmt: skip
    assert done.returncode == 64 and "chmod 600" in done.stderr


def test_kvmworker_call_with_a_private_key_but_no_trusted_keys_refuses_rather_than_trust_any_reply(tmp_path, keys_file):
    done = start(tmp_path, "call", "kvt-any", "SystemHandler", "ping", "--keys-file", str(keys_file), broker=AMQP_URL)
    assert done.returncode == 64 and "trusted_keys_file is not" in done.stderr


def test_a_client_whose_key_file_turned_unsafe_while_running_sends_nothing_and_says_why(
    keyed_worker, signed_client, host, keys_file
):
    assert signed_client.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=10).code == 0
    keys_file.chmod(0o644)
    reply = signed_client.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=10)
    assert reply.code == 20004 and "not sent" in reply.data["detail"] and "chmod 600" in reply.data["detail"]
    keys_file.chmod(0o600)
    assert signed_client.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=10).code == 0
    assert count_of(keyed_worker.counters, "bus") == 2
