"""Fault fixtures: worker processes that can be SIGKILLed, clients on private brokers, and the effect checkers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import unique

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``tests.faults.run_worker`` as a real process: started, SIGKILLed and started again by the test."""

    def __init__(self, broker_url: str, tmp: Path, env: dict[str, str] | None = None):
        self.broker_url, self.tmp = broker_url, tmp
        self.host = unique("kvt-fault-")
        self.state, self.effects = tmp / "state", tmp / "effects"
        self.effects.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self.procs: list[subprocess.Popen] = []

    def start(self, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tests.faults.run_worker", "--host", self.host, "--broker", self.broker_url]
        cmd += ["--state-dir", str(self.state), "--effects", str(self.effects), *extra]
        log = (self.tmp / f"worker{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ | self.env)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "worker ready", self.log()
        return proc

    @property
    def current(self) -> subprocess.Popen:
        return self.procs[-1]

    def kill(self) -> None:
        self.current.send_signal(signal.SIGKILL)
        self.current.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker*.log")))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
