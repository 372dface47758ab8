"""``kvmworker`` sub-commands as real processes whose stderr is read back the way an operator reads it."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import AMQP_URL, require_broker, unique

ROOT = Path(__file__).resolve().parents[2]


class Captured:
    """One ``python -m kvmworker …`` with its stdout and stderr in files, stopped with SIGTERM."""

    def __init__(self, tmp: Path, name: str, *argv: str):
        self.name = name
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvmworker", *argv], cwd=ROOT, stdout=out, stderr=err)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, pattern: str, where: str = "stderr", timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, getattr(self, where))
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {pattern!r} in its {where}; it said:\n{self.stdout}\n{self.stderr}")

    def url(self) -> str:
        return self.wait_for(r"http://[\w.\[\]:]+", "stdout").group(0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not stop within 30 s of SIGTERM:\n{self.stderr}") from None


@pytest.fixture
def run(tmp_path: Path) -> Iterator:
    """``run(name, *argv)`` starts a process; every one still running is stopped at the end."""
    started: list[Captured] = []

    def start(name: str, *argv: str) -> Captured:
        started.append(Captured(tmp_path, name, *argv))
        return started[-1]

    yield start
    for captured in started:
        if captured.proc.poll() is None:
            captured.proc.kill()
            captured.proc.wait(5)


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str

    @property
    def secret_part(self) -> str:
        """What must never be shown: it appears in the password raw and URL-encoded alike."""
        return self.password.split("/")[1]

    def url(self, host: str = "localhost") -> str:
        return f"amqp://{self.name}:{quote(self.password, safe='')}@{host}:5672//"


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def broker_user() -> Iterator[BrokerUser]:
    """A RabbitMQ user of its own with a random password that needs URL-encoding ("/", "@", ":", "%")."""
    require_broker("amqp", AMQP_URL)
    user = BrokerUser(unique("kvt-ops-"), f"kvt/{secrets.token_hex(12)}/@:%")
    try:
        added = rabbitmqctl("add_user", user.name, user.password)
    except FileNotFoundError:
        pytest.skip("rabbitmqctl is not installed: cannot create a RabbitMQ user with a password of its own")
    if added.returncode != 0:
        pytest.skip(f"rabbitmqctl add_user failed (not root on the broker's machine?): {added.stderr.strip()}")
    try:
        assert rabbitmqctl("set_permissions", "-p", "/", user.name, ".*", ".*", ".*").returncode == 0
        yield user
    finally:
        rabbitmqctl("delete_user", user.name)


@dataclass(frozen=True)
class BridgeUser:
    users_file: Path
    name: str
    password: str


@pytest.fixture
def bridge_user(tmp_path: Path) -> BridgeUser:
    user = BridgeUser(tmp_path / "users.json", "kvt-operator", f"kvt-{secrets.token_hex(12)}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kvmworker",
            "users",
            "add",
            "--users",
            str(user.users_file),
            "--password-stdin",
            "--hosts",
            "*",
            "--commands",
            "*",
            user.name,
        ],
        input=user.password + "\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return user


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` as JSON; a line that is not fails with the line itself."""
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
        assert isinstance(parsed[-1], dict), f"a log line is JSON but not an object: {line!r}"
    return parsed


def mentioning(lines: list[dict], text: str, level: str | None = None) -> list[dict]:
    return [line for line in lines if text in json.dumps(line, ensure_ascii=False) and level in (None, line["level"])]
