"""``kvmworker serve`` and ``kvmworker bridge`` as real processes, stopped with SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
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


def test_serve_answers_a_post_at_once_on_the_embedded_broker(tmp_path):
    host = unique("kvt-serve-")
    with process("serve", "--port", "0", "--host", host, "--state-dir", str(tmp_path)) as (proc, url):
        reply = httpx.post(url + "/", json=PING, timeout=10).json()
        assert reply["code"] == 0 and reply["data"]["host"] == host
    assert proc.returncode == 0


def test_the_bridge_process_reaches_a_worker_over_a_real_broker(running_worker, broker_url, host):
    if broker_url.startswith("memory://"):
        pytest.skip("memory:// lives inside one process; a separate bridge process cannot share it")
    argv = ("bridge", "--broker", broker_url, "--port", "0", "--default-host", host)
    with process(*argv) as (proc, url):
        reply = httpx.post(url + "/", json=PING, timeout=10).json()
        assert reply["code"] == 0 and reply["data"]["host"] == host
    assert proc.returncode == 0
