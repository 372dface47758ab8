"""A test handler whose effects converge, so that a command run again after a crash leaves the same state."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from kvmworker.dispatch.commands import Plan, command
from kvmworker.dispatch.context import Context

KEY = r"^[a-z0-9-]{1,40}$"


class PutData(BaseModel):
    key: str = Field(pattern=KEY)
    value: str = Field(max_length=200)
    sleep: float = Field(default=0, ge=0, le=60)


class StateHandler:
    """``put`` makes ``<dir>/<key>`` hold ``value`` in two steps (write a temporary file, then rename), with a
    pause between them a test can SIGKILL into; every run also appends to ``<key>.runs`` so that runs can be counted."""

    name = "StateHandler"

    def __init__(self, state_dir: Path):
        self._dir = state_dir

    @command(PutData, resource=lambda d: f"state:{d.key}")
    def put(self, data: PutData, ctx: Context) -> dict:
        with (self._dir / f"{data.key}.runs").open("a") as runs:
            runs.write(f"{ctx.msg_id}\n")
        tmp = self._dir / f".{data.key}.tmp"
        tmp.write_text(data.value)
        time.sleep(data.sleep)
        os.replace(tmp, self._dir / data.key)
        return {"key": data.key, "value": data.value}

    def plan_put(self, data: PutData, ctx: Context) -> Plan:
        return Plan([f"write {data.key}"])


def runs_of(state_dir: Path, key: str) -> list[str]:
    path = state_dir / f"{key}.runs"
    return path.read_text().split() if path.exists() else []
