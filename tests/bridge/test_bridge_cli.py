"""``kvmworker serve`` and ``kvmworker bridge`` as real processes, stopped with SIGTERM."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import unique

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}


@contextmanager
def process(*argv: str) -> Iterator[tuple[subprocess.Popen, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmworker", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        url = _announced_url(proc)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def _announced_url(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        found = re.search(r"(http://\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"the process exited ({proc.wait()}) without announcing its URL")


def test_serve_answers_a_post_at_once_on_the_embedded_broker_to_the_holder_of_its_token(tmp_path):
    host = unique("kvt-serve-")
    token_file = tmp_path / "run" / "token"
    argv = (
        "serve",
        "--port",
        "0",
        "--host",
        host,
        "--state-dir",
        str(tmp_path / "state"),
        "--token-file",
        str(token_file),
    )
    with process(*argv) as (proc, url):
        bearer = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        reply = httpx.post(url + "/", json=PING, headers=bearer, timeout=10).json()
        assert reply["code"] == 0 and reply["data"]["host"] == host
        assert httpx.post(url + "/", json=PING, timeout=10).json()["code"] == 20004
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert proc.returncode == 0
    assert not token_file.exists(), "a clean stop removes the token file"


def test_the_bridge_process_reaches_a_worker_over_a_real_broker(running_worker, broker_url, host, tmp_path):
    if broker_url.startswith("memory://"):
        pytest.skip("memory:// lives inside one process; a separate bridge process cannot share it")
    token_file = tmp_path / "token"
    argv = ("bridge", "--broker", broker_url, "--port", "0", "--default-host", host, "--token-file", str(token_file))
    with process(*argv) as (proc, url):
        bearer = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        reply = httpx.post(url + "/", json=PING, headers=bearer, timeout=10).json()
        assert reply["code"] == 0 and reply["data"]["host"] == host
    assert proc.returncode == 0


def test_the_bridge_does_not_start_without_a_way_to_tell_callers_apart():
    done = subprocess.run(
        [sys.executable, "-m", "kvmworker", "bridge", "--port", "0"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 64  # EX_USAGE: a configuration that must not run
    assert "--users FILE or --token-file PATH" in done.stderr


@pytest.mark.broker
def test_a_post_still_waiting_when_the_bridge_is_stopped_gets_minus_one_not_an_http_500(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from kombu import Connection

    from kvmworker.transport.connection import delete_host_queue
    from kvmworker.transport.names import host_queue
    from tests.conftest import AMQP_URL, require_broker

    broker, host = require_broker("amqp", AMQP_URL), unique("kvt-drain-")
    with Connection(broker, connect_timeout=5) as conn:
        host_queue(host).bind(conn.default_channel).declare()  # a host whose worker is down
    token = tmp_path / "token"
    argv = ("bridge", "--broker", broker, "--port", "0", "--token-file", str(token), "--timeout", "60")
    try:
        with process(*argv) as (proc, url), ThreadPoolExecutor(1) as pool:
            headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
            waiting = pool.submit(httpx.post, f"{url}/hosts/{host}", json=PING, headers=headers, timeout=60)
            time.sleep(1.0)  # the POST is now waiting for a reply that cannot come
            proc.send_signal(signal.SIGTERM)
            response = waiting.result(30)
            assert proc.wait(20) == 0
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["code"] == -1 and reply["data"]["msg_id"] and "stopping" in reply["data"]["detail"]
    finally:
        delete_host_queue(broker, host)


def test_the_bridge_process_over_plain_amqp_holds_no_client_of_its_own(running_worker, broker_url, host, tmp_path):
    """Over plain AMQP the event loop's lane forwards: a client beside it (its reply connection and queue, its
    publishing thread) would sit unused. After answering, the process holds two connections to the broker: the
    lane's and the host directory's (which looks up the hosts' queues)."""
    if not broker_url.startswith("amqp://"):
        pytest.skip("only plain amqp:// is forwarded by the loop lane; other brokers go through a client")
    token_file = tmp_path / "token"
    argv = ("bridge", "--broker", broker_url, "--port", "0", "--default-host", host, "--token-file", str(token_file))
    with process(*argv) as (proc, url):
        bearer = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        for _ in range(3):
            reply = httpx.post(url + "/", json=PING, headers=bearer, timeout=10).json()
            assert reply["code"] == 0 and reply["data"]["host"] == host
        port = urlsplit(broker_url).port or 5672
        held = psutil.Process(proc.pid).net_connections(kind="tcp")
        to_broker = [c for c in held if c.raddr and c.raddr.port == port]
        assert len(to_broker) == 2, f"connections to the broker: {to_broker}"
    assert proc.returncode == 0


def test_a_bridge_over_any_other_broker_is_not_built_without_a_client_and_says_so_without_the_password():
    from kvmworker.bridge.app import create_app
    from kvmworker.settings import Settings

    settings = Settings(broker="redis://:kvt-secret@127.0.0.1:6379/0", insecure_open=True)
    with pytest.raises(ValueError, match="forwards through a client") as raised:
        create_app(settings, None)
    assert "kvt-secret" not in str(raised.value)
