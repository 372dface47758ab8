"""What reaches the bridge, and how it is counted, now that the two POST paths skip Starlette's router.

``POST /`` and ``POST /hosts/<host>`` go straight to the bridge; any other method or path is answered as
Starlette always answered it. The guard remembers its verdict per Host value, and must not remember a wrong
one. The in-flight gauge is a plain count read when scraped: it must rise while a request waits and fall after.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from kombu import Connection

from kvmworker.bridge.guard import KNOWN_HOSTS_MAX, RequestGuard
from kvmworker.transport.connection import delete_host_queue
from kvmworker.transport.names import host_queue
from tests.conftest import unique

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 405),
        ("PUT", "/hosts/some-host", 405),
        ("POST", "/nowhere", 404),
        ("POST", "/hosts/", 404),
        ("POST", "/hosts/a/b", 404),
        ("POST", "/healthz", 405),
    ],
)
def test_other_methods_and_paths_are_answered_as_starlette_answers_them(bridge, method, path, status):
    response = bridge.http.request(method, bridge.url + path, json=PING)
    assert response.status_code == status, response.text


def test_a_host_path_with_a_trailing_slash_is_redirected_to_the_one_without(bridge, host):
    response = bridge.http.post(bridge.url + f"/hosts/{host}/", json=PING)
    assert response.status_code == 307
    assert response.headers["location"].endswith(f"/hosts/{host}")


def test_both_post_paths_reach_the_worker(bridge, host):
    assert bridge.post(PING).json()["data"]["host"] == host
    assert bridge.post(PING, path=f"/hosts/{host}").json()["data"]["host"] == host


def test_a_foreign_host_name_is_refused_every_time_not_only_the_first(bridge):
    for _ in range(3):
        assert bridge.post(PING, headers={"Host": "attacker.example"}).status_code == 421
        assert bridge.post(PING).json()["code"] == 0


def test_the_guard_judges_every_host_name_alike_however_many_it_has_seen():
    guard = RequestGuard(app=None, server_names=["bridge.example"])
    for i in range(2 * KNOWN_HOSTS_MAX + 5):
        assert guard.host_allowed(f"10.0.{i // 256}.{i % 256}:8080")
        assert not guard.host_allowed(f"attacker{i}.example")
    assert guard.host_allowed("bridge.example") and not guard.host_allowed("attacker0.example")


def test_a_request_waiting_for_its_worker_counts_in_flight_until_it_is_answered(
    make_bridge, bridge_settings, running_worker, broker_url
):
    if broker_url.startswith("memory://"):
        pytest.skip("on memory:// a host's queue lives only while some process holds it; nothing waits in it")
    silent = unique("kvt-silent-")
    with Connection(broker_url, connect_timeout=5) as conn:
        host_queue(silent).bind(conn.default_channel).declare()  # a host whose worker is down
    try:
        with make_bridge(bridge_settings, None, running_worker.pipeline.registry) as bridge:
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(bridge.post, {**PING, "timeout": 3}, path=f"/hosts/{silent}")
                seen_waiting = _in_flight_reaches(bridge.url, 1.0, within=2.5)
                reply = waiting.result(30).json()
            assert seen_waiting, "the waiting request never showed in kvmworker_bridge_in_flight"
            assert reply["code"] == -1
            assert _in_flight(bridge.url) == 0.0
    finally:
        delete_host_queue(broker_url, silent)


def _in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("kvmworker_bridge_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no kvmworker_bridge_in_flight in /metrics")


def _in_flight_reaches(url: str, value: float, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _in_flight(url) == value:
            return True
        time.sleep(0.05)
    return False
