"""Login at the bridge: the three outcomes, tokens (header or field), expiry, logout, throttling, timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher

from kvmworker.bridge.auth import Authenticator
from kvmworker.bridge.throttle import Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import UsersFile

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}


@pytest.fixture
def broker_url() -> str:
    return "memory://"


@pytest.fixture
def users(tmp_path) -> UsersFile:
    # cheaper than the production parameters (~0.4 s a verification here), same code path
    users = UsersFile(tmp_path / "users", PasswordHasher(time_cost=1, memory_cost=16384, parallelism=1))
    users.add("alice", "correct horse", hosts=["*"], commands=["*"])
    return users


def _login_body(username: str, password: object) -> dict:
    return {"handler": "UserHandler", "command": "login", "data": {"username": username, "password": password}}


@pytest.fixture
def guarded(make_bridge, bridge_settings, running_worker, users) -> Iterator:
    auth = Authenticator(users, TokenStore(ttl=60), Throttle(free_failures=1000))
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as running:
        yield running


def _login(bridge, username: str = "alice", password: object = "correct horse") -> dict:
    return bridge.post(_login_body(username, password)).json()


def test_the_right_password_gives_a_token_that_opens_the_bridge(guarded):
    reply = _login(guarded)
    assert reply["code"] == 0 and reply["data"]["expires_in"] == 60
    token = reply["data"]["token"]
    assert guarded.post(PING, headers={"Authorization": f"Bearer {token}"}).json()["code"] == 0
    assert guarded.post({**PING, "token": token}).json()["code"] == 0


def test_an_unknown_user_is_10002(guarded):
    assert (_login(guarded, "mallory")["code"], _login(guarded, "mallory")["msg"]) == (10002, "用户名错误")


def test_a_wrong_password_is_10001(guarded):
    reply = _login(guarded, password="wrong")
    assert (reply["code"], reply["msg"]) == (10001, "登录失败")
    assert "token" not in reply["data"]


def test_calls_without_a_valid_token_are_20004(guarded):
    assert guarded.post(PING).json()["code"] == 20004
    assert guarded.post(PING, headers={"Authorization": "Bearer forged"}).json()["code"] == 20004
    assert guarded.post({**PING, "token": "forged"}).json()["code"] == 20004
    assert guarded.post(PING, headers={"Authorization": "Basic YWxpY2U6eA=="}).json()["code"] == 20004


def test_a_malformed_login_is_20001_naming_the_field(guarded):
    reply = guarded.post({"handler": "UserHandler", "command": "login", "data": {"password": "x"}}).json()
    assert reply["code"] == 20001 and reply["data"]["field"] == "username"


def test_after_logout_the_token_no_longer_opens_the_bridge(guarded):
    token = _login(guarded)["data"]["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    logout = {"handler": "UserHandler", "command": "logout", "data": {}}
    assert guarded.post(logout, headers=bearer).json()["code"] == 0
    assert guarded.post(PING, headers=bearer).json()["code"] == 20004


def test_a_token_expires(make_bridge, bridge_settings, running_worker, users):
    auth = Authenticator(users, TokenStore(ttl=0.5), Throttle())
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as bridge:
        token = _login(bridge)["data"]["token"]
        assert bridge.post({**PING, "token": token}).json()["code"] == 0
        time.sleep(0.7)
        assert bridge.post({**PING, "token": token}).json()["code"] == 20004


def test_repeated_failures_lock_the_account_out_even_for_the_right_password(
    make_bridge, bridge_settings, running_worker, users
):
    auth = Authenticator(users, TokenStore(ttl=60), Throttle(free_failures=2, base_delay=30))
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as bridge:
        for _ in range(3):
            assert _login(bridge, password="guess")["code"] == 10001
        started = time.monotonic()
        locked = _login(bridge)
        assert locked["code"] == 10001 and locked["data"]["retry_after"] >= 29
        assert time.monotonic() - started < 0.05 + 0.2, "a locked-out attempt must not cost a verification"


def test_a_user_added_while_the_bridge_runs_can_log_in_at_once(guarded, users):
    assert _login(guarded, "bob", "s3cret")["code"] == 10002
    time.sleep(0.01)  # a new mtime even on coarse-grained filesystems
    users.add("bob", "s3cret")
    assert _login(guarded, "bob", "s3cret")["code"] == 0


def test_a_numeric_password_from_a_legacy_caller_is_compared_as_text(guarded, users):
    users.add("carol", "123456")
    assert _login(guarded, "carol", 123456)["code"] == 0


@pytest.mark.slow
def test_an_unknown_user_and_a_wrong_password_take_the_same_time(guarded):
    unknown, wrong = [], []
    for _ in range(16):  # interleaved, so that drift in machine load hits both alike
        for username, samples in (("nobody", unknown), ("alice", wrong)):
            started = time.perf_counter()
            _login(guarded, username, "not the password")
            samples.append(time.perf_counter() - started)
    fast, slow = sorted((statistics.median(unknown), statistics.median(wrong)))
    assert fast > 0.005, "a verification must actually run for both"
    assert slow / fast < 1.25, (unknown, wrong)


def test_with_insecure_open_login_succeeds_and_no_token_is_needed(make_bridge, bridge_settings, running_worker):
    settings = bridge_settings.model_copy(update={"insecure_open": True})
    with make_bridge(settings, None, running_worker.pipeline.registry) as bridge, bridge.anonymous() as http:
        assert http.post(bridge.url + "/", json=_login_body("anyone", "anything")).json()["data"]["auth"] == "disabled"
        assert http.post(bridge.url + "/", json=PING).json()["code"] == 0
