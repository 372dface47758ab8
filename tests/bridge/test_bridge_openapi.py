"""/openapi.json, /healthz, /readyz, /metrics; and schemathesis against the served schema."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.system import SystemHandler
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings
from kvmworker.transport.connection import open_connection
from kvmworker.transport.worker import Worker
from tests.bridge.conftest import serving
from tests.conftest import unique

DOCUMENTED = {int(code): code.msg for code in Code}
FUZZ_TIMEOUT_S = 0.3


@pytest.fixture
def broker_url() -> str:
    return "memory://"


def test_the_schema_has_a_branch_for_every_registered_command_and_for_login(bridge, running_worker):
    doc = bridge.http.get(bridge.url + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for handler, commands in running_worker.pipeline.registry.catalogue().items():
        mapping = schemas[f"Call.{handler}"]["discriminator"]["mapping"]
        assert sorted(mapping) == commands
    assert sorted(schemas["Call"]["discriminator"]["mapping"]) == sorted(
        [*running_worker.pipeline.registry.catalogue(), "UserHandler"]
    )
    assert schemas["Call.UserHandler.login"]["properties"]["handler"]["const"] == "UserHandler"
    echo = schemas["Call.ProbeHandler.echo"]["properties"]["data"]["$ref"].rsplit("/", 1)[1]
    assert schemas[echo]["properties"]["text"]["maxLength"] == 1000


def test_probes_and_metrics_answer(bridge):
    assert bridge.http.get(bridge.url + "/healthz").json() == {"status": "ok"}
    assert bridge.http.get(bridge.url + "/readyz").json() == {"status": "ok"}
    bridge.call("SystemHandler", "ping")
    bridge.call("NoSuch", "thing")
    metrics = bridge.http.get(bridge.url + "/metrics").text
    assert 'kvmworker_bridge_requests_total{code="0",command="ping",handler="SystemHandler"} 1.0' in metrics
    # caller-chosen names never become label values
    assert 'kvmworker_bridge_requests_total{code="20002",command="other",handler="other"} 1.0' in metrics


# the client's reply thread dies on kombu's OperationalError (reported to the client's owner)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_without_a_broker_readyz_is_503_and_a_post_is_minus_one_in_time(make_bridge, tmp_path):
    settings = Settings(host=unique("kvt-host-"), broker_url="amqp://guest:guest@127.0.0.1:1//", state_dir=tmp_path)
    with make_bridge(settings) as bridge:
        response = bridge.http.get(bridge.url + "/readyz")
        started = time.monotonic()
        reply = bridge.post({"handler": "SystemHandler", "command": "ping", "data": {}, "timeout": 0.5}).json()
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.json()["status"] == "unavailable"
    assert response.json()["reason"].startswith("broker amqp://guest:***@127.0.0.1:1// unreachable")
    assert reply["code"] == -1 and reply["data"]["msg_id"]
    assert elapsed < 1.5


# -- schemathesis ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_bridge(tmp_path_factory) -> Iterator:
    """The schema of every real handler, but a worker that knows only SystemHandler: fuzzed bodies for
    VmHandler & co. are answered 20002 and change nothing on this machine."""
    host = unique("kvt-fuzz-")
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = Settings(host=host, broker_url="memory://", state_dir=tmp, timeout=FUZZ_TIMEOUT_S)
    worker, thread = _system_only_worker(settings)
    try:
        with serving(settings) as bridge:  # the bridge's default: every real handler's commands, as declared
            yield bridge
    finally:
        worker.stop()
        thread.join(10)


def _system_only_worker(settings: Settings) -> tuple[Worker, threading.Thread]:
    registry = HandlerRegistry()
    registry.add(SystemHandler(settings.host, registry.catalogue))
    worker = Worker(
        open_connection(settings.broker_url),
        Pipeline(registry, host=settings.host),
        settings.host,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.connected.wait(10)
    return worker, thread


@pytest.fixture(scope="module")
def bridge_schema(fuzzed_bridge):
    return schemathesis.openapi.from_url(fuzzed_bridge.url + "/openapi.json")


FUZZ_SETTINGS = hypothesis.settings(
    max_examples=30, deadline=None, suppress_health_check=list(hypothesis.HealthCheck), derandomize=True
)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/"), ("POST", "/hosts/{host}"), ("GET", "/healthz"), ("GET", "/metrics")]
)
def test_no_generated_request_gets_a_5xx_or_an_undocumented_reply(bridge_schema, fuzzed_bridge, method, path):
    operation = bridge_schema[path][method]

    @FUZZ_SETTINGS
    @hypothesis.given(case=operation.as_strategy())
    def check(case) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("timeout"), int | float):
            case.body["timeout"] = min(case.body["timeout"], FUZZ_TIMEOUT_S)  # unknown hosts: -1 quickly
        response = case.call(base_url=fuzzed_bridge.url, timeout=10)
        assert response.status_code < 500, response.text
        if method == "POST":
            reply = response.json()
            assert response.status_code == 200 and set(reply) == {"code", "msg", "data"}, reply
            assert DOCUMENTED.get(reply["code"]) == reply["msg"], reply
        case.validate_response(response)

    check()
