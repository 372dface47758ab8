"""The audit's attacks on the bridge, performed the way the attacker would, and refused (issue 13, findings 1, 8, 10).

Each test names the attack; docs/trust.md's table "Attacks and their answers" points here.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from kvmworker.bridge.auth import Authenticator
from kvmworker.bridge.server import Limits
from kvmworker.bridge.throttle import RateLimit, Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import UsersFile
from kvmworker.protocol.wire import host_queue_name
from tests.bridge.test_bridge_cli import process
from tests.conftest import BROKERS, require_broker, unique
from tests.support.handlers import count_of

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
REPO = Path(__file__).resolve().parents[2]


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _namespace_body(name: str) -> str:
    return json.dumps({"handler": "NamespaceHandler", "command": "create", "data": {"name": name}})


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@contextmanager
def _served_with_token_in(directory: Path) -> Iterator[tuple[str, Path]]:
    """A real ``kvmworker serve`` whose token file sits in a directory every user may traverse."""
    token_file = directory / "token"
    host = unique("kvt-atk-")
    state = directory / "state"
    argv = ("serve", "--port", "0", "--host", host, "--state-dir", str(state), "--token-file", str(token_file))
    with process(*argv) as (_proc, url):
        yield url, token_file


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that nobody may enter and list (0755): only the token file's own mode protects it."""
    directory = Path(tempfile.mkdtemp(prefix="kvt-bridge-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- finding 1: the open embedded default --------------------------------------------------------


@pytest.mark.netlink
def test_an_unprivileged_local_user_can_neither_command_serve_nor_read_its_token(open_dir):
    namespace = unique("kvt-atk-ns-")
    with _served_with_token_in(open_dir) as (url, token_file):
        curl = [*NOBODY, "curl", "-s", url + "/", "-d", _namespace_body(namespace)]
        json_type = ["-H", "Content-Type: application/json"]
        guessed = ["-H", f"Authorization: Bearer {secrets.token_urlsafe(32)}"]
        # the audit's command line first: curl -d sends a form content type
        attempts = [curl, [*curl, *json_type], [*curl, *json_type, *guessed]]
        answers = [json.loads(_run(argv).stdout) for argv in attempts]
        read = _run([*NOBODY, "cat", str(token_file)])
        mode = token_file.stat().st_mode & 0o777
    assert [a["code"] for a in answers] == [20001, 20004, 20004], answers
    assert answers[0]["data"]["field"] == "header.content-type"
    assert not _netns_exists(namespace)
    assert read.returncode != 0 and "Permission denied" in read.stderr
    assert mode == 0o600


@pytest.mark.netlink
def test_a_cross_site_text_plain_post_is_refused_with_a_foreign_host_or_origin(open_dir):
    namespace = unique("kvt-atk-ns-")
    body = _namespace_body(namespace)
    port = None
    with _served_with_token_in(open_dir) as (url, token_file):
        port = url.rsplit(":", 1)[1]
        browser = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://attacker.example"}
        with httpx.Client(timeout=10) as http:
            rebinding = http.post(url + "/", content=body, headers={**browser, "Host": f"attacker.example:{port}"})
            csrf = http.post(url + "/", content=body, headers=browser)  # Host is 127.0.0.1:port
            # even with the token (a page never has it) a foreign Origin is refused
            bearer = {"Authorization": f"Bearer {token_file.read_text().strip()}", "Content-Type": "application/json"}
            with_token = http.post(url + "/", content=body, headers={**bearer, "Origin": "http://attacker.example"})
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            form = http.post(url + "/", content=body, headers={**bearer, **form_type})
            same_origin = http.post(url + "/", json=PING, headers={**bearer, "Origin": f"http://127.0.0.1:{port}"})
    assert (rebinding.status_code, rebinding.json()["code"], rebinding.json()["data"]["field"]) == (
        421, 20001, "header.host",
    )  # fmt: skip
    assert (csrf.status_code, csrf.json()["code"], csrf.json()["data"]["field"]) == (403, 20004, "header.origin")
    assert (with_token.status_code, with_token.json()["code"]) == (403, 20004)
    assert (form.status_code, form.json()["code"], form.json()["data"]["field"]) == (415, 20001, "header.content-type")
    assert (same_origin.status_code, same_origin.json()["code"]) == (200, 0)
    assert not _netns_exists(namespace)


def test_the_readme_first_post_works_as_written_for_root(tmp_path):
    """The README's curl, byte for byte, against ``kvmworker serve`` with its defaults (port 8080,
    /run/kvmworker/token), in a network and mount namespace of its own so that nothing else on this
    machine is touched or in the way."""
    readme = (REPO / "README.md").read_text()
    run_it = readme[readme.index("## Run it") : readme.index("## Test it")]
    line = next(ln for ln in run_it.splitlines() if ln.startswith("curl "))
    assert "/run/kvmworker/token" in line and "127.0.0.1:8080" in line
    kvmworker = Path(sys.executable).with_name("kvmworker")
    script = f"""
set -e
ip link set lo up
mkdir -p /run/kvmworker
mount -t tmpfs -o mode=0700 tmpfs /run/kvmworker
{kvmworker} serve --host {unique("kvt-readme-")} --state-dir {tmp_path}/state >{tmp_path}/serve.out 2>&1 &
serve=$!
for i in $(seq 100); do [ -s /run/kvmworker/token ] && grep -q '^try:' {tmp_path}/serve.out && break; sleep 0.1; done
{line}
echo
curl -s http://127.0.0.1:8080/ -H 'Content-Type: application/json' -d '{json.dumps(PING)}'
kill -TERM $serve; wait $serve
"""
    done = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", "sh", "-c", script], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, (done.stdout, done.stderr, (tmp_path / "serve.out").read_text())
    with_token, without = (json.loads(x) for x in done.stdout.strip().splitlines())
    assert with_token["code"] == 0 and with_token["data"]["host"].startswith("kvt-readme-")
    assert without["code"] == 20004


# -- finding 8 and per-user grants ------------------------------------------------------------------


def _kvmworker(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "kvmworker", *argv], input=stdin, capture_output=True, text=True, timeout=60
    )
    return done


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """memory:// unless a test asks for the others (``indirect`` parametrisation)."""
    name = getattr(request, "param", "memory")
    return BROKERS[name] if name == "memory" else require_broker(name, BROKERS[name])


@pytest.fixture
def users_path(tmp_path) -> Path:
    return tmp_path / "users"


@pytest.fixture
def guarded(make_bridge, bridge_settings, running_worker, users_path) -> Iterator:
    users = UsersFile(users_path)
    auth = Authenticator(users, TokenStore(ttl=600), Throttle(free_failures=1000))
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as running:
        yield running


def _login(bridge, username: str, password: str) -> str:
    body = {"handler": "UserHandler", "command": "login", "data": {"username": username, "password": password}}
    reply = bridge.post(body).json()
    assert reply["code"] == 0, reply
    return reply["data"]["token"]


def _as(bridge, token: str, body: dict, path: str = "/") -> dict:
    return bridge.post(body, path=path, headers={"Authorization": f"Bearer {token}"}).json()


def test_a_removed_users_token_is_refused_at_once(guarded, users_path):
    assert _kvmworker("users", "add", "bob", "--password-stdin", "--users", str(users_path),
                      "--hosts", "*", "--commands", "*", stdin="pw-bob\n").returncode == 0  # fmt: skip
    token = _login(guarded, "bob", "pw-bob")
    assert _as(guarded, token, PING)["code"] == 0
    assert _kvmworker("users", "remove", "bob", "--users", str(users_path)).returncode == 0
    refused = _as(guarded, token, PING)
    assert refused["code"] == 20004 and "removed" in refused["data"]["detail"]


def test_a_token_from_before_a_password_change_is_refused(guarded, users_path):
    add = ("users", "add", "bob", "--password-stdin", "--users", str(users_path), "--hosts", "*", "--commands", "*")
    assert _kvmworker(*add, stdin="old password\n").returncode == 0
    old = _login(guarded, "bob", "old password")
    assert _kvmworker(*add, stdin="new password\n").returncode == 0
    assert _as(guarded, old, PING)["code"] == 20004
    assert _as(guarded, _login(guarded, "bob", "new password"), PING)["code"] == 0


def test_a_user_limited_to_one_host_and_handler_is_refused_elsewhere(guarded, users_path, host):
    assert _kvmworker("users", "add", "carol", "--password-stdin", "--users", str(users_path),
                      "--hosts", host, "--commands", "SystemHandler.*", stdin="pw\n").returncode == 0  # fmt: skip
    token = _login(guarded, "carol", "pw")
    assert _as(guarded, token, PING)["code"] == 0
    other_host = _as(guarded, token, PING, path=f"/hosts/{unique('kvt-other-')}")
    other_handler = _as(guarded, token, {"handler": "VmHandler", "command": "list", "data": {}})
    assert (other_host["code"], other_host["data"]["field"]) == (20004, "host")
    assert "kvt-other-" in other_host["data"]["detail"]
    assert (other_handler["code"], other_handler["data"]["field"]) == (20004, "command")
    assert "VmHandler.list" in other_handler["data"]["detail"]


def test_a_refused_command_never_reaches_the_worker(guarded, users_path, tmp_path):
    UsersFile(users_path).add("frank", "pw", hosts=["*"], commands=["SystemHandler.*"])
    token = _login(guarded, "frank", "pw")
    count = {"handler": "ProbeHandler", "command": "count", "data": {"name": "frank"}}
    assert _as(guarded, token, count)["code"] == 20004
    assert _as(guarded, token, PING)["code"] == 0  # the worker is there and frank may reach it
    # refused at the bridge: never signed, never published, never run
    assert count_of(tmp_path / "counters", "frank") == 0
    UsersFile(users_path).grant("frank", None, ["SystemHandler.*", "ProbeHandler.count"])
    assert _as(guarded, token, count)["code"] == 0
    assert count_of(tmp_path / "counters", "frank") == 1


def test_a_new_user_without_grants_reaches_nothing_until_granted(guarded, users_path):
    added = _kvmworker("users", "add", "dave", "--password-stdin", "--users", str(users_path), stdin="pw\n")
    assert "reach nothing" in added.stdout
    token = _login(guarded, "dave", "pw")
    assert _as(guarded, token, PING)["code"] == 20004
    granted = _kvmworker("users", "grant", "dave", "--users", str(users_path), "--hosts", "*", "--commands", "*")
    assert granted.returncode == 0
    assert _as(guarded, token, PING)["code"] == 0, "a grant keeps the password, and so the token"


# -- finding 10 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("broker_url", ["memory", "amqp", "redis"], indirect=True)
def test_an_unknown_host_is_a_clear_error_and_no_queue_is_created(bridge, broker_url):
    stranger = unique("kvt-stranger-")
    reply = bridge.post(PING, headers={"X-KVM-Host": stranger}).json()
    assert (reply["code"], reply["data"]["field"]) == (20001, "host")
    assert "does not exist" in reply["data"]["detail"]
    if broker_url.startswith("amqp"):
        listed = _run(["rabbitmqctl", "-q", "list_queues", "name"])
        assert listed.returncode == 0 and host_queue_name(stranger) not in listed.stdout.split()
    if broker_url.startswith("redis"):
        import redis

        db = redis.Redis.from_url(broker_url)
        assert not db.exists(host_queue_name(stranger))
        assert not any(stranger.encode() in m for m in db.smembers("_kombu.binding.kvmworker"))


def _trickle_headers(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    return sock


def _trickle_body(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 5000\r\n\r\n"
    sock.sendall(head.encode() + b'{"handler": ')
    return sock


def test_two_hundred_trickling_connections_do_not_keep_healthz_from_answering(
    make_bridge, bridge_settings, running_worker
):
    settings = bridge_settings.model_copy(update={"body_timeout": 2.0})
    limits = Limits(max_connections=64, header_timeout=3.0)
    with make_bridge(settings, None, running_worker.pipeline.registry, limits) as bridge, ExitStack() as stack:
        port = int(bridge.url.rsplit(":", 1)[1])
        trickling = [_trickle_headers(port) for _ in range(200)]
        trickling += [_trickle_body(port, bridge.token) for _ in range(20)]
        for sock in trickling:
            stack.callback(sock.close)
        started = time.monotonic()
        with httpx.Client(timeout=5) as http:
            health = [http.get(bridge.url + "/healthz", headers={"Connection": "close"}).status_code for _ in range(5)]
        answered_in = time.monotonic() - started
        time.sleep(limits.header_timeout + 1)
        still_open = sum(1 for sock in trickling if _still_open(sock))
    assert health == [200] * 5
    assert answered_in < 5, answered_in  # generous: it is well under a second when nothing starves it
    assert still_open == 0, f"{still_open} trickling connections outlived the header and body timeouts"


def test_headers_over_64_kib_are_refused_with_431_and_the_connection_closed(bridge):
    port = int(bridge.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for i in range(200):  # 200 × 1 KiB, far past the limit; the server may close mid-way
                sock.sendall(f"X-Filler-{i}: {'a' * 1000}\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]


def test_a_kept_alive_connection_whose_next_request_never_completes_its_headers_is_closed_after_the_header_timeout(
    make_bridge, bridge_settings, running_worker
):
    limits = Limits(header_timeout=1.0)
    with make_bridge(bridge_settings, None, running_worker.pipeline.registry, limits) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = sock.recv(65536)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            time.sleep(limits.header_timeout + 1.5)  # well before the 5 s idle keep-alive limit would close it
            closed = not _still_open(sock)
    assert first.startswith(b"HTTP/1.1 200")
    assert closed, "the second request's missing headers kept the connection open past the header timeout"


def _still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        while chunk := sock.recv(65536):
            del chunk  # a 20001 answer to a slow body, then the close
        return False
    except (ConnectionResetError, BrokenPipeError):
        return False
    except TimeoutError:
        return True


def test_x_forwarded_for_is_not_believed_by_the_login_throttle(make_bridge, bridge_settings, running_worker, tmp_path):
    users = UsersFile(tmp_path / "users", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    users.add("alice", "right", hosts=["*"], commands=["*"])
    auth = Authenticator(users, TokenStore(ttl=60), Throttle(free_failures=3, base_delay=60))
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as bridge:
        for i in range(4):  # a new user name and a new claimed address each time
            body = {"handler": "UserHandler", "command": "login", "data": {"username": f"u{i}", "password": "x"}}
            bridge.post(body, headers={"X-Forwarded-For": f"10.0.0.{i}"})
        login = {"handler": "UserHandler", "command": "login", "data": {"username": "alice", "password": "right"}}
        locked = bridge.post(login, headers={"X-Forwarded-For": "10.9.9.9"}).json()
    # the failures were counted against 127.0.0.1, the real peer, whatever the header said
    assert locked["code"] == 10001 and locked["data"]["retry_after"] >= 59


class CountingHasher(PasswordHasher):
    """A real argon2 hasher that remembers the parameters of every hash it verified."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(re.sub(r"\$[^$]+\$[^$]+$", "", str(hash)))  # $argon2id$v=19$m=…,t=…,p=…
        return super().verify(hash, password)


def test_an_unknown_user_and_a_wrong_password_cost_the_same_verification(
    make_bridge, bridge_settings, running_worker, tmp_path
):
    hasher = CountingHasher()
    users = UsersFile(tmp_path / "users", hasher)
    users.add("alice", "right", hosts=["*"], commands=["*"])
    auth = Authenticator(users, TokenStore(ttl=60), Throttle(free_failures=1000))
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as bridge:
        hasher.verified.clear()
        unknown = bridge.post(_login_body("mallory", "x")).json()
        wrong = bridge.post(_login_body("alice", "x")).json()
    assert (unknown["code"], wrong["code"]) == (10002, 10001)  # the legacy codes stay
    assert len(hasher.verified) == 2 and hasher.verified[0] == hasher.verified[1], hasher.verified


def _login_body(username: str, password: str) -> dict:
    return {"handler": "UserHandler", "command": "login", "data": {"username": username, "password": password}}


def test_a_global_login_rate_limit_stops_guessing_across_many_users_and_addresses(
    make_bridge, bridge_settings, running_worker, tmp_path
):
    users = UsersFile(tmp_path / "users", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    users.add("alice", "right", hosts=["*"], commands=["*"])
    auth = Authenticator(
        users, TokenStore(ttl=60), Throttle(free_failures=1000), login_rate=RateLimit(per_second=0.01, burst=3)
    )
    with make_bridge(bridge_settings, auth, running_worker.pipeline.registry) as bridge:
        answers = [bridge.post(_login_body(f"guess{i}", "x")).json()["code"] for i in range(3)]
        limited = bridge.post(_login_body("alice", "right")).json()
    assert answers == [10002] * 3
    assert limited["code"] == 10001 and limited["data"]["retry_after"] > 0


# -- the principal in the journal and the logs -------------------------------------------------------


def test_the_bridge_user_is_recorded_in_the_journal_and_the_command_log(guarded, users_path, caplog):
    UsersFile(users_path).add("erin", "pw", hosts=["*"], commands=["*"])
    token = _login(guarded, "erin", "pw")
    msg_id = "6f1f7a52-4d55-4c2e-9a43-7e0c2b9d0a11"
    with caplog.at_level("INFO", logger="kvmworker.commands"):
        # a caller's own "principal" is replaced by the one the bridge authenticated
        reply = _as(guarded, token, {**PING, "msg_id": msg_id, "principal": "root"})
    assert reply["code"] == 0
    shown = _kvmworker("journal", "show", msg_id, "--state-dir", str(guarded.settings.state_dir))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["envelope"]["principal"] == "erin"
    assert any(msg_id in r.getMessage() and "by erin" in r.getMessage() for r in caplog.records)
