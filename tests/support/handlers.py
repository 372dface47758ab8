"""Handlers that exist only for tests: observable effects without touching the host."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from kvmworker.dispatch.commands import Plan, command
from kvmworker.dispatch.context import Context


class SleepData(BaseModel):
    seconds: float = Field(ge=0, le=60)
    key: str | None = None


class HoldData(BaseModel):
    seconds: float = Field(ge=0, le=10)


class EchoData(BaseModel):
    text: str = Field(max_length=1000)


class CountData(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    sleep: float = Field(default=0, ge=0, le=60)
    # finish at the next multiple of ``align`` seconds of the wall clock: commands in flight end together
    align: float = Field(default=0, ge=0, le=5)


class ProbeHandler:
    """``sleep`` holds a pool thread; ``count`` appends to a file (an effect a test can count) then sleeps."""

    name = "ProbeHandler"

    def __init__(self, counter_dir: Path | None = None):
        self._counter_dir = counter_dir
        self._lock = threading.Lock()

    @command(SleepData, resource=lambda d: d.key)
    def sleep(self, data: SleepData, ctx: Context) -> dict:
        time.sleep(data.seconds)
        return {"slept": data.seconds}

    def plan_sleep(self, data: SleepData, ctx: Context) -> Plan:
        return Plan([f"sleep {data.seconds} s"])

    @command(HoldData, mutates=False, inline=True)
    def hold(self, data: HoldData, ctx: Context) -> dict:
        """Runs on the consumer thread itself (inline), holding it: nothing is read from the broker meanwhile."""
        time.sleep(data.seconds)
        return {"held": data.seconds}

    @command(EchoData, mutates=False)
    def echo(self, data: EchoData, ctx: Context) -> dict:
        return {"text": data.text, "msg_id": ctx.msg_id}

    @command(CountData, resource=lambda d: f"count:{d.name}")
    def count(self, data: CountData, ctx: Context) -> dict:
        assert self._counter_dir is not None, "ProbeHandler needs a counter_dir for count"
        path = self._counter_dir / f"{data.name}.count"
        with self._lock, path.open("a") as f:
            f.write(f"{ctx.msg_id}\n")
            f.flush()
        time.sleep(data.sleep)
        if data.align:
            time.sleep(data.align - time.time() % data.align)
        return {"counted": data.name}

    def plan_count(self, data: CountData, ctx: Context) -> Plan:
        return Plan([f"append a line to {data.name}.count"])

    @command(CountData, resource=lambda d: f"count:{d.name}", idempotent=True)
    def converge(self, data: CountData, ctx: Context) -> dict:
        """Like ``count`` (each start is recorded), but its effect converges: a second run changes nothing."""
        self.count(data, ctx)
        return {"converged": data.name}

    def plan_converge(self, data: CountData, ctx: Context) -> Plan:
        return self.plan_count(data, ctx)

    @command(CountData, resource=lambda d: f"count:{d.name}", idempotent=True)
    def crash(self, data: CountData, ctx: Context) -> dict:
        """A poison message: every start kills the worker process (as a segfault in a C library would)."""
        self.count(data, ctx)
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    def plan_crash(self, data: CountData, ctx: Context) -> Plan:
        return Plan([f"append a line to {data.name}.count", "kill the worker"])

    @command(mutates=False)
    def unserialisable(self, data: object, ctx: Context) -> dict:
        return {"handle": object()}

    @command(mutates=False)
    def boom(self, data: object, ctx: Context) -> dict:
        raise RuntimeError("a bug inside a handler")


def count_of(counter_dir: Path, name: str) -> int:
    path = counter_dir / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0
