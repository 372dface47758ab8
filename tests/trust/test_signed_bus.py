"""Signed commands over real RabbitMQ and Redis: signing callers are served; forgers and replayers get nothing done."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmworker.client import Client
from kvmworker.trust.keys import load_private_keys
from tests.support.handlers import count_of
from tests.trust.conftest import signer_of, write_private, write_trusted
from tests.trust.wire import unsigned_answerer

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
COUNT = {"handler": "ProbeHandler", "command": "count", "data": {"name": "bus"}}
NO_REPLY_WAIT_S = 1.5


def test_a_signing_client_gets_a_signed_reply_and_the_command_runs(keyed_worker, signed_client, host):
    reply = signed_client.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=10)
    assert reply.code == 0
    assert count_of(keyed_worker.counters, "bus") == 1


def test_a_client_without_keys_gets_no_answer_and_nothing_runs(keyed_worker, real_broker, host):
    with Client(real_broker) as unsigned:
        reply = unsigned.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=NO_REPLY_WAIT_S)
    assert reply.code == -1
    assert count_of(keyed_worker.counters, "bus") == 0
    assert keyed_worker.journal.store.find(reply.data["msg_id"]).reply["code"] == 20004


def test_a_raw_forged_signature_is_not_answered_and_the_worker_keeps_serving(keyed_worker, raw, signed_client, host):
    out = raw.message(COUNT)
    out.headers["x-kvm-signature"] = "v2:o1:" + "0" * 128
    assert raw.wait(raw.send(out), NO_REPLY_WAIT_S) == []
    assert count_of(keyed_worker.counters, "bus") == 0
    assert keyed_worker.journal.store.find(out.msg_id).reply["code"] == 20004
    assert signed_client.call(host, "SystemHandler", "ping", timeout=10).code == 0


@pytest.mark.parametrize("tamper", ["body", "reply_to", "expiry", "msg_id"])
def test_a_signed_message_changed_in_flight_runs_nothing_and_answers_nobody(keyed_worker, raw, signer, tamper):
    out = raw.sign(raw.message(COUNT), signer)
    if tamper == "body":
        out.body = json.dumps(COUNT | {"data": {"name": "evil"}}).encode()
    elif tamper == "reply_to":
        # signed for someone else's reply queue, redirected to ours: we must hear nothing
        out = raw.message(COUNT)
        out.reply_to = "kvmworker.reply.someone-else"
        raw.sign(out, signer).reply_to = raw.reply_queue.name
    elif tamper == "expiry":
        out.headers["x-kvm-expires-at"] += 3600
    else:
        out.msg_id = str(uuid.uuid4())
    assert raw.wait(raw.send(out), NO_REPLY_WAIT_S) == []
    assert count_of(keyed_worker.counters, "bus") + count_of(keyed_worker.counters, "evil") == 0


def test_a_signed_message_replayed_verbatim_runs_once_and_the_replay_gets_the_recorded_reply(keyed_worker, raw, signer):
    out = raw.sign(raw.message(COUNT), signer)
    first = raw.wait(raw.send(out))
    replayed = raw.wait(raw.send(out))
    assert [r.body["code"] for r in first + replayed] == [0, 0]
    assert count_of(keyed_worker.counters, "bus") == 1


def test_a_message_signed_for_another_host_and_routed_here_is_refused_20004(keyed_worker, raw, signer):
    out = raw.message(COUNT)
    out.headers["x-kvm-host"] = "kvt-some-other-host"
    raw.sign(out, signer)
    replies = raw.wait(raw.send(out))
    assert [r.body["code"] for r in replies] == [20004]
    assert count_of(keyed_worker.counters, "bus") == 0


def test_a_signed_message_that_sat_in_the_queue_past_its_deadline_is_answered_20005(keyed_worker, raw, signer):
    out = raw.sign(raw.message(COUNT, issued=time.time() - 120, timeout=60), signer)
    replies = raw.wait(raw.send(out))
    assert [r.body["code"] for r in replies] == [20005]
    assert count_of(keyed_worker.counters, "bus") == 0


def test_every_reply_of_a_keyed_worker_carries_a_signature_the_caller_can_check(keyed_worker, raw, signer):
    out = raw.sign(raw.message(COUNT), signer)
    correlation_id = raw.send(out)
    [reply] = raw.wait(correlation_id)
    assert reply.headers["x-kvm-signature"].startswith("v2:r1:")
    assert signer.reply_is_authentic(reply.raw, correlation_id, out.msg_id, reply.headers, raw.host)


def test_a_forged_reply_is_dropped_by_the_client_which_answers_minus_one(real_broker, signer, host):
    """A fake worker consumes the host's queue and answers unsigned: the caller must not believe it."""
    from kombu import Connection, Consumer, Producer

    from kvmworker.transport.names import host_queue

    with Client(real_broker, signer=signer) as client, Connection(real_broker) as conn:
        producer = Producer(conn.channel())
        forge = unsigned_answerer(producer)
        queue = host_queue(host)
        with Consumer(conn.channel(), [queue], callbacks=[forge]):
            pending = client.submit(host, {"handler": "SystemHandler", "command": "ping", "data": {}}, timeout=3)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
            reply = client.wait(pending, 3)
        queue.bind(conn).delete()
    assert reply.code == -1


def test_during_key_rotation_clients_on_the_old_and_the_new_orchestrator_key_are_both_served(
    keyed_worker, real_broker, host, tmp_path, keys_file, worker_trust, client_trust, key_o1, key_o2
):
    write_trusted(worker_trust, orchestrator={"o1": key_o1, "o2": key_o2})  # step 1: every worker learns o2
    new_keys = write_private(tmp_path / "new.json", "o2", {"o1": key_o1, "o2": key_o2})  # step 2: sign with o2
    for keys in (keys_file, new_keys):
        with Client(real_broker, signer=signer_of(keys, client_trust)) as client:
            assert client.call(host, "ProbeHandler", "count", {"name": "bus"}, timeout=10).code == 0
    assert count_of(keyed_worker.counters, "bus") == 2


def test_a_client_that_has_not_enrolled_the_hosts_new_reply_key_drops_its_replies(
    real_broker, host, tmp_path, signer, worker_trust, client_trust, reply_key
):
    from kvmworker.runtime import start_worker
    from kvmworker.settings import Settings

    # the worker switched to a reply key r2 that this client's trusted file does not list yet
    rotated = write_private(tmp_path / "rotated.json", "r2", {"r1": reply_key, "r2": Ed25519PrivateKey.generate()})
    settings = Settings(
        host=host, broker_url=real_broker, state_dir=tmp_path / "s", keys_file=rotated, trusted_keys_file=worker_trust
    )
    running = start_worker(settings)
    try:
        assert running.worker.connected.wait(15)
        with Client(real_broker, signer=signer) as client:
            assert client.call(host, "SystemHandler", "ping", timeout=NO_REPLY_WAIT_S).code == -1
            write_trusted(client_trust, hosts={host: {"r2": load_private_keys(rotated).keys["r2"]}})
            assert client.call(host, "SystemHandler", "ping", timeout=10).code == 0  # enrolled: no restart needed
    finally:
        running.stop(timeout=10)


def test_the_kvmworker_call_command_signs_with_the_configured_key_file(
    keyed_worker, real_broker, host, keys_file, client_trust
):
    env = os.environ | {"KVMWORKER_KEYS_FILE": str(keys_file), "KVMWORKER_TRUSTED_KEYS_FILE": str(client_trust)}
    cmd = [sys.executable, "-m", "kvmworker", "call", host, "ProbeHandler", "count", "--data", '{"name": "cli"}']
    done = subprocess.run(
        [*cmd, "--broker", real_broker, "--timeout", "10"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout)["code"] == 0, done.stderr
    assert count_of(keyed_worker.counters, "cli") == 1


def test_the_http_bridge_signs_what_it_forwards_with_the_configured_key_file(
    keyed_worker, real_broker, host, keys_file, client_trust
):
    env = os.environ | {"KVMWORKER_KEYS_FILE": str(keys_file), "KVMWORKER_TRUSTED_KEYS_FILE": str(client_trust)}
    cmd = [sys.executable, "-m", "kvmworker", "bridge", "--broker", real_broker, "--port", "0", "--default-host", host]
    cmd.append("--insecure-open")  # what is under test is the signature; callers are told apart elsewhere
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://"), url
        body = {"handler": "ProbeHandler", "command": "count", "data": {"name": "bridge"}, "timeout": 10}
        reply = httpx.post(url + "/", json=body, timeout=20).json()
    finally:
        proc.terminate()
        proc.wait(10)
    assert reply["code"] == 0, reply
    assert count_of(keyed_worker.counters, "bridge") == 1
