"""The product from the outside: a venv holding the wheel and the locked dependencies only (no test extras),
its ``kvmworker`` command run as a subprocess, and commands published with plain kombu, as a foreign
orchestrator following README "On the broker" would publish them — not through kvmworker's own client.

The venv is built once per session (``wheel_venv`` in tests/deploy/conftest.py), the way the image is.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from kvmworker.observability.health import HEALTH_SCHEMA
from tests.conftest import AMQP_URL, REDIS_URL, require_broker
from tests.deploy.conftest import ROOT, WheelVenv
from tests.support.processes import stop_process

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PING = {"handler": "SystemHandler", "command": "ping", "data": {}}
# generous bounds: a cold start imports libvirt and pyroute2 on a loaded 2-core machine
START_S = 60.0
REPLY_S = 30.0


def run(venv: WheelVenv, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv.kvmworker), *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        return stop_process(self.proc, 30)


@pytest.fixture
def spawn(wheel_venv: WheelVenv, tmp_path: Path) -> Iterator:
    started: list[Process] = []

    def start(*args: str) -> Process:
        log = tmp_path / f"{args[0]}{len(started)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(wheel_venv.kvmworker), *args], stdout=out, stderr=subprocess.STDOUT)
        started.append(Process(proc, log))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def http(method: str, url: str, body: dict | None = None, token: Path | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token is not None and token.exists():
        headers["Authorization"] = f"Bearer {token.read_text().strip()}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REPLY_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def until_answers(
    method: str, url: str, process: Process, body: dict | None = None, token: Path | None = None
) -> tuple[int, dict]:
    deadline = time.monotonic() + START_S
    while True:
        assert process.proc.poll() is None, f"exited {process.proc.returncode}:\n{process.output()}"
        try:
            return http(method, url, body, token)
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from {url} in {START_S:g} s:\n{process.output()}") from None
            time.sleep(0.2)


# -- the venv itself --------------------------------------------------------------------------


def test_the_wheel_venv_holds_a_consistent_set_without_the_test_extras(wheel_venv):
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(wheel_venv.python), "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    probe = "import importlib.util as u, json; print(json.dumps([m for m in %r if u.find_spec(m)]))"
    wanted = ("kombu", "redis", "packaging", "amqp", "libvirt", "pyroute2", "uvicorn", "starlette")
    unwanted = ("pytest", "hypothesis", "httpx", "fakeredis", "fastapi")
    found = subprocess.run([wheel_venv.python, "-c", probe % (wanted + unwanted,)], capture_output=True, text=True)
    assert json.loads(found.stdout) == list(wanted), found.stderr


def test_kvmworker_help_works_from_the_wheel_alone(wheel_venv):
    done = run(wheel_venv, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kvmworker") and "worker" in done.stdout and done.stderr == ""


def test_kvmworker_version_prints_the_version_from_the_wheel_alone(wheel_venv):
    done = run(wheel_venv, "--version")
    assert (done.returncode, done.stderr) == (0, "")
    assert VERSION in done.stdout


# -- serve: the embedded default --------------------------------------------------------------


def test_kvmworker_serve_from_the_wheel_answers_a_post_and_is_ready(spawn, tmp_path):
    port = free_port()
    token = tmp_path / "token"
    serve = spawn(
        "serve", "--port", str(port), "--state-dir", str(tmp_path / "state"), "--libvirt-uri", "test:///default",
        "--token-file", str(token),
    )  # fmt: skip
    status, reply = until_answers("POST", f"http://127.0.0.1:{port}/", serve, PING, token)
    assert (status, reply["code"], reply["msg"]) == (200, 0, "成功"), reply
    assert reply["data"]["version"] == VERSION
    assert http("GET", f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ok"})
    assert serve.stop() == 0, serve.output()
    assert "libvirt is unreachable" not in serve.output()


def test_kvmworker_serve_says_at_start_that_libvirt_is_unreachable_and_what_to_do(spawn, tmp_path):
    port, socket_path = free_port(), tmp_path / "kvt-no-libvirtd.sock"
    uri = f"qemu+unix:///system?socket={socket_path}"
    token = tmp_path / "token"
    state = str(tmp_path / "state")
    serve = spawn("serve", "--port", str(port), "--state-dir", state, "--libvirt-uri", uri, "--token-file", str(token))
    until_answers("POST", f"http://127.0.0.1:{port}/", serve, PING, token)
    vm = http("POST", f"http://127.0.0.1:{port}/", {"handler": "VmHandler", "command": "list", "data": {}}, token)[1]
    assert serve.stop() == 0
    assert vm["code"] == 30009 and str(socket_path) in vm["data"]["detail"]
    lines = serve.output().splitlines()
    logged = [line for line in lines if "WARNING kvmworker.serve: libvirt is unreachable" in line]
    in_banner = [line for line in lines if line.startswith("warning: libvirt is unreachable")]
    assert len(logged) == 1 and len(in_banner) == 1, serve.output()
    for line in logged + in_banner:
        assert str(socket_path) in line and "30009" in line
        assert "apt-get install libvirt-daemon-system" in line and "systemctl start libvirtd" in line


# -- the worker on real brokers, commanded with plain kombu ------------------------------------


def plain_kombu_call(url: str, host: str, envelope: dict) -> tuple[dict, dict]:
    """Publish as README "On the broker" says, and wait for the reply: (reply, its properties)."""
    exchange = Exchange("kvmworker", type="direct", durable=True)
    host_queue = Queue(f"kvmworker.{host}", exchange, routing_key=host, durable=True)
    reply_name = f"kvt.reply.{uuid.uuid4().hex}"
    reply_queue = Queue(reply_name, routing_key=reply_name, durable=False, exclusive=True, auto_delete=True)
    correlation_id, msg_id = uuid.uuid4().hex, str(uuid.uuid4())
    replies: list = []
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        with Consumer(channel, queues=[reply_queue], on_message=replies.append, accept=["application/json"]):
            Producer(channel).publish(
                json.dumps(envelope).encode(),
                exchange=exchange,
                routing_key=host,
                declare=[host_queue],  # the command waits in the queue if the worker is not consuming yet
                content_type="application/json",
                content_encoding="utf-8",
                reply_to=reply_name,
                correlation_id=correlation_id,
                message_id=msg_id,
            )
            deadline = time.monotonic() + REPLY_S
            while not replies and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
        assert replies, f"no reply on {reply_name} within {REPLY_S:g} s"
        message = replies[0]
        message.ack()
        reply_queue.bind(channel).delete()
    assert message.properties["correlation_id"] == correlation_id
    return json.loads(message.body), message.properties


def delete_queue(url: str, host: str) -> None:
    with Connection(url, connect_timeout=5) as conn:
        Queue(f"kvmworker.{host}", Exchange("kvmworker", type="direct", durable=True), routing_key=host).bind(
            conn.channel()
        ).delete()


@pytest.mark.broker
@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_a_worker_from_the_wheel_answers_a_ping_published_with_plain_kombu(spawn, tmp_path, scheme):
    url = require_broker(scheme, AMQP_URL if scheme == "amqp" else REDIS_URL)
    host = f"kvt-outside-{uuid.uuid4().hex[:8]}"
    worker = spawn("worker", "--host", host, "--broker", url, "--state-dir", str(tmp_path / "state"))
    try:
        reply, properties = plain_kombu_call(url, host, PING)
        assert (reply["code"], reply["msg"], reply["data"]["host"]) == (0, "成功", host), reply
        assert properties["message_id"]
        assert worker.proc.poll() is None, worker.output()
        assert worker.stop() == 0, worker.output()
    finally:
        worker.stop()
        delete_queue(url, host)


def test_the_worker_and_the_bridge_answer_readyz_in_one_shape(spawn, tmp_path):
    unreachable = "amqp://guest:guest@127.0.0.1:1//"
    worker_port, bridge_port = free_port(), free_port()
    worker = spawn(
        "worker", "--host", "kvt-outside-down", "--broker", unreachable, "--state-dir", str(tmp_path / "state"),
        "--health-port", str(worker_port), "--health-bind", "127.0.0.1",
    )  # fmt: skip
    bridge = spawn("bridge", "--broker", unreachable, "--port", str(bridge_port), "--token-file", str(tmp_path / "t"))
    answers = {
        "worker": until_answers("GET", f"http://127.0.0.1:{worker_port}/readyz", worker),
        "bridge": until_answers("GET", f"http://127.0.0.1:{bridge_port}/readyz", bridge),
    }
    for status, body in answers.values():
        jsonschema.validate(body, HEALTH_SCHEMA)
        assert (status, sorted(body), body["status"]) == (503, ["reason", "status"], "unavailable")
    assert "guest:guest" not in json.dumps(answers)
    for path, process in ((f"{worker_port}/healthz", worker), (f"{bridge_port}/healthz", bridge)):
        assert until_answers("GET", f"http://127.0.0.1:{path}", process) == (200, {"status": "ok"})
