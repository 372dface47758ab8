"""scripts/setup.sh and scripts/run.sh, run as the README says (they need root and Debian, as CI has)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/dpkg-query").exists(), reason="the scripts set up a Debian machine as root"
)
VENV = ROOT / ".venv"
START_S = 60.0


def setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/setup.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="no .venv: scripts/setup.sh --test makes it")
def test_setup_run_again_on_an_installed_venv_runs_no_pip_and_the_stamp_holds_both_locks():
    first = setup("--test")  # installs only when this venv was not set up from the current locks
    assert first.returncode == 0, first.stdout + first.stderr
    again, runtime_only = setup("--test"), setup()
    for done in (again, runtime_only):
        assert done.returncode == 0, done.stdout + done.stderr
        assert "installing" not in done.stdout and done.stdout.endswith("[setup] ready: .venv/bin/kvmworker\n")
    stamp = (VENV / ".kvmworker-installed").read_text().split()
    fingerprints = [
        subprocess.run(
            f"cat pyproject.toml {lock} | sha256sum", shell=True, cwd=ROOT, capture_output=True, text=True
        ).stdout.split()[0]
        for lock in ("requirements-test.lock", "requirements.lock")
    ]
    assert stamp == fingerprints


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="no .venv: scripts/setup.sh --test makes it")
def test_run_sh_starts_the_embedded_default_and_a_post_is_answered(tmp_path):
    port = free_port()
    log = (tmp_path / "run.log").open("w")
    token = tmp_path / "token"
    args = [
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--host",
        "kvt-run-sh",
        "--token-file",
        str(token),
    ]
    proc = subprocess.Popen(["bash", "scripts/run.sh", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    body = json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}}).encode()
    try:
        deadline, reply = time.monotonic() + START_S, None
        while reply is None:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                headers = {"Content-Type": "application/json"}
                if token.exists():
                    headers["Authorization"] = f"Bearer {token.read_text().strip()}"
                request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as response:
                    reply = json.loads(response.read())
            except (ConnectionError, urllib.error.URLError):
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(0.2)
        assert (reply["code"], reply["data"]["host"]) == (0, "kvt-run-sh")
    finally:
        proc.send_signal(signal.SIGTERM)  # run.sh execs kvmworker: the signal reaches serve itself
        assert proc.wait(30) == 0, (tmp_path / "run.log").read_text()
    assert "kvmworker serve: worker for host 'kvt-run-sh'" in (tmp_path / "run.log").read_text()
