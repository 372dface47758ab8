"""POST / over memory://, RabbitMQ and Redis: the legacy body in, the worker's reply out, unchanged."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from kvmworker.protocol.codes import Code
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.bridge.conftest import serving
from tests.conftest import unique
from tests.support.handlers import ProbeHandler

ECHO = {"handler": "ProbeHandler", "command": "echo", "data": {"text": "你好"}}


def test_a_legacy_body_reaches_the_worker_and_its_reply_comes_back_unchanged(bridge):
    msg_id = str(uuid.uuid4())
    response = bridge.post({**ECHO, "msg_id": msg_id})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"code": 0, "msg": "成功", "data": {"text": "你好", "msg_id": msg_id}}


def test_the_bridge_answers_exactly_what_the_client_library_gets(bridge, client, host):
    body = {"handler": "ProbeHandler", "command": "sleep", "data": {"seconds": -1}}
    direct = client.call(host, "ProbeHandler", "sleep", {"seconds": -1}, timeout=10)
    assert bridge.post(body).json() == direct.model_dump(mode="json")


def test_worker_errors_pass_through_with_their_codes(bridge):
    reply = bridge.call("NoSuchHandler", "create")
    assert (reply["code"], reply["msg"]) == (20002, "不支持的处理器")


def test_the_target_host_can_be_named_by_path_or_header(bridge, host):
    by_path = bridge.post(ECHO, path=f"/hosts/{host}").json()
    by_header = bridge.post(ECHO, headers={"X-KVM-Host": host}).json()
    assert by_path["code"] == by_header["code"] == 0


def test_with_allowed_hosts_set_another_host_is_refused_20001_and_gets_no_queue(bridge_settings, running_worker, host):
    settings = bridge_settings.model_copy(update={"allowed_hosts": [host]})
    stranger = unique("kvt-stranger-")
    with serving(settings, registry=running_worker.pipeline.registry) as bridge:
        assert bridge.post(ECHO).json()["code"] == Code.OK
        refused = bridge.post(ECHO, path=f"/hosts/{stranger}").json()
    assert (refused["code"], refused["data"]["field"]) == (20001, "host")
    if not settings.broker_url.startswith("memory"):
        from kombu import Connection
        from kombu.exceptions import ChannelError

        from kvmworker.transport.names import host_queue

        with Connection(settings.broker_url) as conn, pytest.raises(ChannelError):
            host_queue(stranger).bind(conn.default_channel).queue_declare(passive=True)


def test_a_known_host_whose_worker_is_down_is_answered_minus_one_in_time_then_result_tells(
    bridge, broker_url, tmp_path
):
    if broker_url.startswith("memory"):
        pytest.skip("on memory:// the host's queue lives only while some process holds it; nothing is down")
    absent = unique("kvt-late-")
    late_settings = bridge.settings.model_copy(update={"host": absent, "state_dir": tmp_path / "late"})
    first = start_worker(late_settings, extra_handlers=[ProbeHandler()])  # its queue is made, then it stops
    assert first.worker.connected.wait(15)
    first.stop(timeout=10)
    try:
        started = time.monotonic()
        reply = bridge.post({**ECHO, "timeout": 1.0}, path=f"/hosts/{absent}").json()
        elapsed = time.monotonic() - started
        assert (reply["code"], reply["msg"]) == (-1, "未知异常")
        assert 0.9 <= elapsed < 2.5, elapsed
        msg_id = reply["data"]["msg_id"]
        late = start_worker(late_settings, extra_handlers=[ProbeHandler()])
        try:
            assert late.worker.connected.wait(15)
            outcome = _result_when_known(bridge, absent, msg_id)
        finally:
            late.stop(timeout=10)
    finally:
        delete_host_queue(broker_url, absent)
    # it ran late (0, the echo) or was refused as expired (20005): either way the caller now knows
    assert outcome["code"] in (Code.OK, Code.EXPIRED), outcome
    if outcome["code"] == Code.OK:
        assert outcome["data"]["msg_id"] == msg_id


def test_with_the_broker_unreachable_posts_are_answered_minus_one_by_their_deadline_and_the_bridge_serves_on(
    tmp_path,
):
    """Nothing listens on port 1. The POSTs wait side by side (no thread each), each until its own deadline."""
    host = unique("kvt-nobroker-")
    settings = Settings(
        host=host, default_host=host, broker_url="amqp://guest:guest@127.0.0.1:1//", state_dir=tmp_path, timeout=2.0
    )

    async def all_of_them(bridge) -> tuple[list[dict], int]:
        async with httpx.AsyncClient(timeout=30, headers=bridge.http.headers) as http:
            posts = [http.post(bridge.url + "/", json={**ECHO, "data": {"text": f"n{i}"}}) for i in range(20)]
            health = http.get(bridge.url + "/healthz")
            *answers, alive = await asyncio.gather(*posts, health)
            return [a.json() for a in answers], alive.status_code

    with serving(settings) as bridge:
        answers, alive = asyncio.run(all_of_them(bridge))
    assert alive == 200
    assert len({a["data"]["msg_id"] for a in answers}) == 20
    assert {(a["code"], a["data"]["detail"]) for a in answers} == {
        (-1, "the broker could not be reached within 2 s: the command was not sent")
    }


def _result_when_known(bridge, host: str, msg_id: str) -> dict:
    for _ in range(100):
        outcome = bridge.post(
            {"handler": "SystemHandler", "command": "result", "data": {"msg_id": msg_id}}, path=f"/hosts/{host}"
        ).json()
        if outcome["code"] != -1:
            return outcome
        time.sleep(0.1)
    return outcome


def test_two_hundred_concurrent_requests_each_get_their_own_reply(bridge):
    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, dict]:
        body = {"handler": "ProbeHandler", "command": "echo", "data": {"text": f"n{i}"}}
        response = await http.post(bridge.url + "/", json=body)
        return i, response.json()

    async def all_of_them() -> list[tuple[int, dict]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits, headers=bridge.http.headers) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    answers = asyncio.run(all_of_them())
    assert len(answers) == 200
    for i, reply in answers:
        assert reply["code"] == 0, reply
        assert reply["data"]["text"] == f"n{i}"


DOCUMENTED_EXAMPLE = {
    "command": "create",
    "handler": "NetworkHandler",
    "data": {
        "network_id": "5b0503ba-1af4-11ea-baa2-000c2902e179",
        "network_type": "vlan",
        "physical_interface": "ens224",
        "vlan_id": "1001",
    },
}


@pytest.mark.netlink
def test_the_documented_network_example_gets_a_documented_reply_like_the_client_library_does(
    bridge, client, host, running_worker
):
    if "NetworkHandler" not in running_worker.pipeline.registry.catalogue():
        pytest.skip("NetworkHandler is not registered in kvmworker/app.py yet")
    if Path("/sys/class/net/ens224").exists():
        pytest.skip("this machine has a real ens224; the example would change its network")
    reply = bridge.post(DOCUMENTED_EXAMPLE).json()
    assert set(reply) == {"code", "msg", "data"}
    assert Code(reply["code"]).msg == reply["msg"]
    direct = client.call(host, "NetworkHandler", "create", DOCUMENTED_EXAMPLE["data"], timeout=10)
    assert reply == direct.model_dump(mode="json")


def test_a_reply_over_a_kept_alive_connection_does_not_wait_for_a_delayed_ack(bridge):
    durations = []
    for _ in range(30):
        started = time.perf_counter()
        bridge.post(ECHO)
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[15] < 0.02, durations  # Nagle + delayed ACK would make it ~40 ms
