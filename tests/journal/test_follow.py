"""``kvmworker journal list --follow`` while a worker writes the journal: new entries appear, SIGTERM/Ctrl-C exit 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import unique
from tests.journal.effects import EffectsHandler

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


class Follower:
    """``kvmworker journal list --follow`` in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, state_dir: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmworker", "journal", "list", "--follow", "--state-dir", str(state_dir), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"KVMWORKER_LOG_LEVEL": "WARNING"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 20) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing printed within {timeout} s; stderr: {self._stderr()}") from None

    def stop(self, how: int) -> int:
        self.proc.send_signal(how)
        return self.proc.wait(20)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def worker(amqp_url: str, tmp_path: Path) -> Iterator[tuple[RunningWorker, Settings, Client]]:
    effects = tmp_path / "effects"
    effects.mkdir()
    settings = Settings(host=unique("kvt-jf-"), broker_url=amqp_url, state_dir=tmp_path / "state")
    running = start_worker(settings, extra_handlers=[EffectsHandler(effects)])
    try:
        assert running.worker.connected.wait(15)
        with Client(amqp_url) as client:
            yield running, settings, client
    finally:
        running.stop(timeout=10)
        delete_host_queue(amqp_url, settings.host)


def touch(settings: Settings, client: Client, name: str) -> str:
    msg_id = str(uuid.uuid4())
    reply = client.call(settings.host, "EffectsHandler", "touch", {"name": name}, msg_id=msg_id, timeout=90)
    assert reply.code == Code.OK, reply
    return msg_id


def test_follow_prints_the_entries_a_running_worker_writes_and_ends_with_0_on_sigterm(worker):
    _, settings, client = worker
    before = touch(settings, client, "f0")
    follower = Follower(settings.state_dir)
    try:
        assert follower.next_line().split()[:3] == ["RECEIVED", "(UTC)", "MSG_ID"]
        assert before in follower.next_line()  # what was there already, like tail
        written = [touch(settings, client, f"f{i}") for i in (1, 2, 3)]
        shown = [follower.next_line() for _ in written]
        assert [line.split()[2] for line in shown] == written
        assert all("EffectsHandler.touch" in line and " answered " in line for line in shown)
        assert follower.stop(signal.SIGTERM) == 0
    finally:
        follower.close()


def test_follow_json_prints_one_object_per_entry_and_ends_with_0_on_ctrl_c(worker):
    _, settings, client = worker
    follower = Follower(settings.state_dir, "--json", "--command", "touch")
    try:
        client.call(settings.host, "SystemHandler", "ping", {})  # filtered out
        written = touch(settings, client, "j1")
        entry = json.loads(follower.next_line())
        assert (entry["msg_id"], entry["command"], entry["reply"]["code"]) == (written, "touch", 0)
        assert follower.stop(signal.SIGINT) == 0
    finally:
        follower.close()
