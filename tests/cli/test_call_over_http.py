"""``kvmworker call --url``: the envelope POSTed to a running ``serve`` (the embedded memory:// worker that no
other process can reach over the broker), with the bridge's login token when it asks for one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import unique
from tests.support.cli import assert_one_line_error, clean_env, kvmworker, serving


def serve_args(tmp_path: Path, host: str, *extra: str) -> list[str]:
    where = ["--host", host, "--port", "0", "--state-dir", str(tmp_path / "state"), "--storage-dirs", str(tmp_path)]
    return ["serve", *where, "--libvirt-uri", "test:///default", *extra]


def test_call_with_url_reaches_the_worker_inside_a_running_serve(tmp_path):
    host = unique("kvt-serve-")
    token_file = tmp_path / "token"
    with serving(*serve_args(tmp_path, host, "--token-file", str(token_file))) as (_, url):
        done = kvmworker("call", "--url", f"{url}/", "--token-file", str(token_file), host, "SystemHandler", "ping")
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert json.loads(done.stdout)["data"]["host"] == host
        anonymous = kvmworker("call", "--url", url, "--token-file", "/dev/null", host, "SystemHandler", "ping")
        assert anonymous.returncode == 1 and json.loads(anonymous.stdout)["code"] == 20004
        auth = (f"--token={token_file.read_text().strip()}",)  # a token may start with "-"
        refused = kvmworker("call", "--url", url, *auth, host, "SystemHandler", "nope")
        assert refused.returncode == 1 and json.loads(refused.stdout)["code"] == 20003
        dry = kvmworker("call", "--url", url, *auth, host, "SystemHandler", "ping", "--dry-run", "--data", "{}")
        assert dry.returncode == 0, dry.stdout
        env = clean_env(KVMWORKER_URL=url, KVMWORKER_TOKEN_FILE=str(token_file))
        from_env = kvmworker("call", host, "SystemHandler", "ping", env=env)
        assert from_env.returncode == 0, from_env.stderr


def test_call_with_url_logs_in_with_a_token_when_the_bridge_has_users(tmp_path):
    host = unique("kvt-serve-")
    users = tmp_path / "users.json"
    grants = ("--hosts", "*", "--commands", "*")
    added = kvmworker("users", "add", "alice", *grants, "--password-stdin", "--users", str(users), input="pw-kvt\n")
    assert added.returncode == 0, added.stderr
    with serving(*serve_args(tmp_path, host, "--users", str(users), "--token-file", str(tmp_path / "t"))) as (_, url):
        anonymous = kvmworker("call", "--url", url, "--token-file", "/dev/null", host, "SystemHandler", "ping")
        assert anonymous.returncode == 1, anonymous.stdout
        login = {"username": "alice", "password": "pw-kvt"}
        logged_in = kvmworker("call", "--url", url, host, "UserHandler", "login", "--data", json.dumps(login))
        token = json.loads(logged_in.stdout)["data"]["token"]
        with_flag = kvmworker("call", "--url", url, f"--token={token}", host, "SystemHandler", "ping")
        assert with_flag.returncode == 0, with_flag.stdout
        with_env = kvmworker("call", "--url", url, host, "SystemHandler", "ping", env=clean_env(KVMWORKER_TOKEN=token))
        assert with_env.returncode == 0, with_env.stdout


def test_a_bridge_that_is_not_there_exits_69():
    done = kvmworker("call", "--url", "http://127.0.0.1:1/", "kvt-h", "SystemHandler", "ping")
    assert_one_line_error(done, 69, "cannot reach the bridge", "127.0.0.1:1")


def test_a_url_that_is_not_http_is_a_usage_error():
    done = kvmworker("call", "--url", "ftp://x/", "kvt-h", "SystemHandler", "ping")
    assert_one_line_error(done, 64, "--url ftp://x/")
