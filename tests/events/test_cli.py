"""``kvmworker events`` as the operator runs it: a process of its own, over the broker or a running ``serve``."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import jsonschema
import pytest

from kvmworker.client import Client
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.cli import KVMWORKER, ROOT, assert_one_line_error, clean_env, kvmworker, serving
from tests.support.processes import stop_process

EVENT_SCHEMA = json.loads((ROOT / "schemas" / "event.json").read_text())


class Follower:
    """``kvmworker events …`` with its stdout and stderr read line by line as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [KVMWORKER, "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=_read_into, args=(stream, lines), daemon=True).start()

    def wait_following(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any("following" in line for line in self.err) and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {''.join(self.err)}"
            time.sleep(0.05)
        assert any("following" in line for line in self.err), "".join(self.err)

    def finish(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise AssertionError(f"still running; printed {self.out} {self.err}") from None


def _read_into(stream, lines: list[str]) -> None:
    lines.extend(iter(stream.readline, ""))


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


def test_events_json_prints_each_event_as_one_json_object_a_line_and_stops_after_count(amqp, start_event_worker):
    host = unique("kvt-cli-")
    worker = start_event_worker(amqp, host)
    follower = Follower("--broker", amqp, "--host", host, "--source", "probe", "--json", "--count", "5")
    try:
        follower.wait_following()
        with Client(amqp) as client:
            reply = client.call(host, "EventProbeHandler", "emit", {"count": 7, "subject": "kvt-cli"}, timeout=30)
        assert reply.code == 0
        assert follower.finish() == 0, "".join(follower.err)
    finally:
        stop_process(follower.proc)
    events = [json.loads(line) for line in follower.out]
    assert len(events) == 5
    for event in events:
        jsonschema.Draft202012Validator(EVENT_SCHEMA).validate(event)
    assert [e["seq"] for e in events] == reply.data["seqs"][:5]
    assert {e["host"] for e in events} == {host} and {e["source"] for e in events} == {"probe"}
    worker.stop()


def test_events_without_json_prints_one_readable_line_per_event(amqp, start_event_worker):
    host = unique("kvt-cli-")
    start_event_worker(amqp, host)
    follower = Follower("--broker", amqp, "--host", host, "--count", "2")
    try:
        follower.wait_following()
        with Client(amqp) as client:
            assert client.call(host, "EventProbeHandler", "degrade", {"reason": "connection lost"}).code == 0
            msg_id = str(uuid.uuid4())
            reply = client.call(host, "EventProbeHandler", "emit", {"subject": "kvt-cli"}, timeout=30, msg_id=msg_id)
        assert follower.finish() == 0, "".join(follower.err)
    finally:
        stop_process(follower.proc)
    degraded, tick = follower.out
    assert f"{host}  #2  worker.state  {host}  degraded (libvirt: connection lost), was online\n" in degraded
    assert f"  {host}  #3  probe.tick  kvt-cli  ticked  [msg {msg_id}]  " in tick
    assert reply.code == 0


def test_events_follows_a_running_serve_over_http(tmp_path):
    """The embedded default: memory:// inside `serve`, read from another process through its GET /events."""
    host = unique("kvt-serve-")
    token_file = tmp_path / "token"
    args = ["serve", "--host", host, "--port", "0", "--state-dir", str(tmp_path / "state")]
    args += ["--libvirt-uri", "test:///default", "--token-file", str(token_file), "--resync-interval", "0.5"]
    with serving(*args) as (_, url):
        follower = Follower("--url", url, "--token-file", str(token_file), "--host", host, "--json", "--count", "2")
        try:
            follower.wait_following()
            assert follower.finish() == 0, "".join(follower.err)
        finally:
            stop_process(follower.proc)
    syncs = [json.loads(line) for line in follower.out]
    assert [(e["source"], e["state"], e["reason"]) for e in syncs] == [("worker", "sync", "interval")] * 2
    assert syncs[1]["seq"] == syncs[0]["seq"] + 1
    assert {"degraded", "dropped", "interval"} <= set(syncs[0]["data"])  # vms/networks: from their sources


def test_events_on_memory_from_another_process_refuses_at_once_and_says_how_to_reach_serve():
    done = kvmworker("events", "--broker", "memory://", timeout=30)
    assert_one_line_error(done, 64, "memory://", "--url")


def test_events_with_an_unreachable_broker_says_so_and_exits_69():
    done = kvmworker("events", "--broker", "amqp://guest:secret@127.0.0.1:1//", timeout=60)
    line = assert_one_line_error(done, 69, "cannot reach the broker")
    assert "secret" not in line


def test_events_with_a_bad_token_at_the_bridge_says_what_the_bridge_answered(tmp_path):
    host = unique("kvt-serve-")
    args = ["serve", "--host", host, "--port", "0", "--state-dir", str(tmp_path / "state")]
    args += ["--libvirt-uri", "test:///default", "--token-file", str(tmp_path / "token")]
    with serving(*args) as (_, url):
        done = kvmworker("events", "--url", url, "--token", "wrong", timeout=30)
    assert_one_line_error(done, 69, "HTTP 401", "token")


def test_kvmworker_worker_says_online_when_it_starts_and_offline_when_sigterm_stops_it(amqp, tmp_path):
    host = unique("kvt-cli-")
    follower = Follower("--broker", amqp, "--host", host, "--json", "--count", "2")
    worker = None
    try:
        follower.wait_following()
        worker = subprocess.Popen(
            [KVMWORKER, "worker", "--host", host, "--broker", amqp, "--state-dir", str(tmp_path / "state"),
             "--libvirt-uri", "test:///default"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(), cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not follower.out and time.monotonic() < deadline:
            time.sleep(0.05)
        assert follower.out, "no online from the worker"
        assert stop_process(worker) == 0
        assert follower.finish() == 0, "".join(follower.err)
    finally:
        stop_process(follower.proc)
        if worker is not None:
            stop_process(worker)
        delete_host_queue(amqp, host)
    online, offline = (json.loads(line) for line in follower.out)
    assert (online["state"], online["seq"], offline["state"], offline["seq"]) == ("online", 1, "offline", 2)
    assert offline["previous"] == "online" and offline["reason"] == "stopping"
