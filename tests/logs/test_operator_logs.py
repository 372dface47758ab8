"""The logs of ``worker``, ``bridge`` and ``serve`` read as an operator reads them: real processes on real
RabbitMQ with a password in the broker URL, a login at the bridge, a few commands, a bridge timeout and
a bad body, then SIGTERM. Nothing secret in what they print; with ``--log-json`` every line is JSON; each
event is said once; nothing but log lines at shutdown.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from kombu import Connection

from kvmworker.transport.connection import delete_host_queue
from kvmworker.transport.names import host_queue
from tests.conftest import AMQP_URL, unique
from tests.logs.conftest import BridgeUser, BrokerUser, Captured, json_lines, mentioning

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NOISE = ("Traceback", "--- Logging error ---", "Message: ", "Arguments: ")
BAD_NETWORK_ID = "not-a-uuid"


class Session:
    """What a caller does at a bridge: log in, ping, a bad body, bad data, a command nobody answers."""

    def __init__(self, url: str, user: BridgeUser, silent_host: str):
        self.url, self.silent_host = url, silent_host
        self.http = httpx.Client(timeout=30)
        login = {
            "handler": "UserHandler",
            "command": "login",
            "data": {"username": user.name, "password": user.password},
        }
        reply = self.post("/", login)
        assert reply["code"] == 0, reply
        self.token = reply["data"]["token"]
        assert self.token
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.bad_data_msg_id = str(uuid.uuid4())
        self.timed_out_msg_id: str | None = None

    def post(self, path: str, body: object, **kwargs) -> dict:
        content = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        return self.http.post(self.url + path, content=content, json=json_body, **kwargs).json()

    def drive(self) -> None:
        ping = {"handler": "SystemHandler", "command": "ping", "data": {}}
        assert self.post("/", ping, headers=self.headers)["code"] == 0
        capabilities = {"handler": "SystemHandler", "command": "capabilities", "data": {}}
        self.capabilities = self.post("/", capabilities, headers=self.headers)
        assert self.capabilities["code"] == 0
        assert self.post("/", b"{bad", headers=self.headers)["code"] == 20001
        bad_data = {"handler": "NetworkHandler", "command": "create", "msg_id": self.bad_data_msg_id}
        bad_data["data"] = {"network_id": BAD_NETWORK_ID, "network_type": "flat", "physical_interface": "eth0"}
        assert self.post("/", bad_data, headers=self.headers)["code"] == 30006
        silent = {"handler": "SystemHandler", "command": "ping", "data": {}, "timeout": 1}
        timed_out = self.post(f"/hosts/{self.silent_host}", silent, headers=self.headers)
        assert timed_out["code"] == -1, timed_out
        self.timed_out_msg_id = timed_out["data"]["msg_id"]
        self.probes = [self.http.get(self.url + path).text for path in ("/readyz", "/metrics", "/openapi.json")]
        logout = {"handler": "UserHandler", "command": "logout", "data": {}}
        assert self.post("/", logout, headers=self.headers)["code"] == 0
        self.http.close()


@pytest.fixture
def silent_host():
    """A host whose worker is down (its queue exists, nobody consumes): the bridge's call to it times out (-1).
    Its queue goes at the end."""
    host = unique("kvt-silent-")
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        host_queue(host).bind(conn.default_channel).declare()
    yield host
    delete_host_queue(AMQP_URL, host)


@pytest.fixture
def worker_host():
    host = unique("kvt-ops-")
    yield host
    delete_host_queue(AMQP_URL, host)


def assert_nothing_secret(user: BrokerUser, bridge_user: BridgeUser, session: Session, *texts: str) -> None:
    for text in texts:
        assert user.secret_part not in text
        assert bridge_user.password not in text
        assert session.token not in text


def assert_said_once(lines: list[dict], session: Session) -> None:
    """The bad body, the bad data and the -1 each make exactly one warning, RUNNING OPEN one line."""
    (bad_body,) = mentioning(lines, "body is not JSON", "WARNING")
    assert bad_body["logger"] == "kvmworker.dispatch"
    (bad_data,) = mentioning(lines, session.bad_data_msg_id, "WARNING")
    assert (bad_data["code"], bad_data["handler"], bad_data["command"]) == (30006, "NetworkHandler", "create")
    assert bad_data["detail"].startswith("network_id:")
    (timed_out,) = mentioning(lines, session.timed_out_msg_id, "WARNING")
    assert timed_out["level"] == "WARNING" and timed_out["code"] == -1
    assert (timed_out["host"], timed_out["handler"], timed_out["command"]) == (
        session.silent_host,
        "SystemHandler",
        "ping",
    )
    assert len(mentioning(lines, "RUNNING OPEN")) == 1


def assert_clean_shutdown(captured: Captured) -> None:
    assert captured.stop() == 0, captured.stderr
    for noise in NOISE:
        assert noise not in captured.stderr, f"{captured.name} printed {noise!r}:\n{captured.stderr}"


def test_worker_and_bridge_log_json_lines_without_the_broker_password_or_the_token(
    run, broker_user, bridge_user, worker_host, silent_host, tmp_path
):
    broker, state = broker_user.url(), str(tmp_path / "state")
    worker = run("worker", "worker", "--host", worker_host, "--broker", broker, "--state-dir", state, "--log-json",
                 "--health-port", "0")  # fmt: skip
    worker.wait_for("consuming kvmworker.")
    bridge = run("bridge", "bridge", "--broker", broker, "--port", "0", "--default-host", worker_host,
                 "--users", str(bridge_user.users_file), "--log-json", "--log-level", "debug")  # fmt: skip
    session = Session(bridge.url(), bridge_user, silent_host)
    session.drive()
    health_port = worker.wait_for(r"health and metrics on port (\d+)").group(1)
    worker_metrics = httpx.get(f"http://127.0.0.1:{health_port}/metrics", timeout=10).text
    # a foreign orchestrator's bad body, straight onto the worker's queue (no reply_to: nobody to answer)
    with Connection(AMQP_URL) as conn:
        conn.Producer().publish(b"{bad", routing_key=f"kvmworker.{worker_host}", content_type="application/json")
    (from_the_bus,) = [
        line for line in json_lines(worker.wait_for(r".*undecodable message.*").group(0)) if line["level"] == "WARNING"
    ]

    assert_clean_shutdown(bridge)
    assert_clean_shutdown(worker)
    worker_lines, bridge_lines = json_lines(worker.stderr), json_lines(bridge.stderr)
    assert {"uvicorn.error", "uvicorn.access"} <= {line["logger"] for line in bridge_lines}
    assert any(line["message"] == "worker stopped" for line in worker_lines)
    assert_said_once(bridge_lines + [line for line in worker_lines if line != from_the_bus], session)
    assert mentioning(worker_lines, "body is not JSON", "WARNING") == [from_the_bus]  # once, not twice
    assert_nothing_secret(broker_user, bridge_user, session, worker.stdout, worker.stderr, bridge.stdout, bridge.stderr,
                          worker_metrics, str(session.capabilities), *session.probes)  # fmt: skip
    assert f"{broker_user.name}:***@" in worker.stderr  # masked, not dropped: the operator still sees which user


def test_serve_on_a_list_of_broker_urls_logs_json_lines_without_any_password(
    run, broker_user, bridge_user, worker_host, silent_host, tmp_path
):
    # kombu's failover list: every URL in it carries the password
    brokers = f"{broker_user.url('localhost')};{broker_user.url('127.0.0.1')}"
    state = str(tmp_path / "state")
    serve = run("serve", "serve", "--host", worker_host, "--broker", brokers, "--port", "0", "--state-dir", state,
                "--users", str(bridge_user.users_file), "--token-file", str(tmp_path / "token"),
                "--log-json", "--log-level", "debug")  # fmt: skip
    session = Session(serve.url(), bridge_user, silent_host)
    session.drive()

    assert_clean_shutdown(serve)
    lines = json_lines(serve.stderr)
    assert {"uvicorn.error", "uvicorn.access", "kvmworker.worker"} <= {line["logger"] for line in lines}
    assert_said_once(lines, session)
    assert_nothing_secret(broker_user, bridge_user, session, serve.stdout, serve.stderr, *session.probes)
    assert serve.stdout.count(":***@") == 2  # the banner names both brokers, both masked
    announced = [json.loads(line) for line in serve.stdout.splitlines()]  # JSON mode: stdout is JSON too
    assert announced[0]["event"] == "listening" and announced[0]["url"].startswith("http://")


def test_a_worker_and_a_bridge_that_cannot_reach_their_redis_say_why_without_the_password(run, tmp_path):
    password = f"kvt{uuid.uuid4().hex}"
    # nothing listens on port 1: every attempt fails, and the failure's text is logged and answered
    broker = f"redis://:{password}@127.0.0.1:1/0"
    worker = run("worker-redis", "worker", "--host", unique("kvt-ops-"), "--broker", broker,
                 "--state-dir", str(tmp_path / "state"))  # fmt: skip
    bridge = run("bridge-redis", "bridge", "--broker", broker, "--port", "0", "--token-file", str(tmp_path / "token"))
    readyz = httpx.get(bridge.url() + "/readyz", timeout=10)
    worker.wait_for(r"consumer stopped \(.+\); reconnecting")

    assert_clean_shutdown(worker)
    assert_clean_shutdown(bridge)
    assert readyz.status_code == 503
    assert "redis://:***@127.0.0.1:1/0 unreachable" in readyz.json()["reason"]
    for text in (worker.stderr, worker.stdout, bridge.stderr, bridge.stdout, readyz.text):
        assert password not in text
    assert "redis://:***@127.0.0.1:1/0" in worker.stderr
    assert "redis://:***@127.0.0.1:1/0" in bridge.stderr
