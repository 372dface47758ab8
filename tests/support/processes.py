"""Worker processes for tests that must kill a real worker (SIGKILL) and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``tests.support.run_worker`` for one host: each start is a new process on the same state directory.

    The test handlers (ProbeHandler, EffectsHandler, StateHandler) record their effects in ``effects``;
    each process logs to ``workerN.log`` beside it, shown when a start fails.
    """

    def __init__(self, broker_url: str, tmp: Path, host: str | None = None, env: dict[str, str] | None = None):
        self.broker_url, self.tmp = broker_url, tmp
        self.host = host or f"kvt-proc-{uuid.uuid4().hex[:8]}"
        self.state, self.effects = tmp / "state", tmp / "effects"
        self.effects.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self.procs: list[subprocess.Popen] = []

    def start(self, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tests.support.run_worker", "--host", self.host, "--broker", self.broker_url]
        cmd += ["--state-dir", str(self.state), "--effects", str(self.effects), *extra]
        with (self.tmp / f"worker{len(self.procs)}.log").open("w") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ | self.env
            )
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "worker ready", self.log()
        return proc

    @property
    def current(self) -> subprocess.Popen:
        return self.procs[-1]

    def kill(self, proc: subprocess.Popen | None = None) -> None:
        proc = proc or self.current
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, 10)

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker*.log")))


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, as systemd or kubelet stop it; SIGKILL if it does not end in ``timeout``. Its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
