"""A test-only handler with long-running commands (§8): one that reports progress and can be cancelled, one
that cannot be cancelled. Each records in ``effects`` when it starts and how it ended, so a test sees from
outside whether a command ran at all (``started``) and whether a cancel stopped it (``cancelled``)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from kvmworker.dispatch.commands import Plan, command
from kvmworker.dispatch.context import Context
from kvmworker.protocol.errors import Cancelled

ALL = "all"


class SlowData(BaseModel):
    key: str = Field(default="kvt-slow", pattern=r"^[a-z0-9-]{1,40}$")
    """The resource: commands with the same key run one after another."""
    seconds: float = Field(default=30, ge=0, le=300)
    steps: int = Field(default=10, ge=1, le=1000)


class HoldData(BaseModel):
    key: str = Field(default="kvt-hold", pattern=r"^[a-z0-9-]{1,40}$")
    seconds: float = Field(default=60, ge=0, le=300)
    """Holds its pool thread until ``release(effects, key)`` (or ``release_all``) or this many seconds."""


class SlowHandler:
    name = "SlowHandler"

    def __init__(self, effects: Path):
        self._effects = effects

    def plan_progress(self, data: SlowData, ctx: Context) -> Plan:
        return Plan([f"progress {data.model_dump()}"])

    @command(SlowData, resource=lambda d: f"slow:{d.key}", cancellable=True)
    def progress(self, data: SlowData, ctx: Context) -> dict:
        """``steps`` steps over ``seconds``, reporting each; a cancel stops it between two steps."""
        self._mark(ctx.msg_id, "started")
        for step in range(data.steps):
            ctx.progress(100 * step / data.steps, f"step {step + 1} of {data.steps}")
            if ctx.sleep(data.seconds / data.steps):
                self._mark(ctx.msg_id, "cancelled")
                raise Cancelled(f"stopped in step {step + 1} of {data.steps}; nothing was left behind")
        ctx.progress(100, "finished")
        self._mark(ctx.msg_id, "finished")
        return {"steps": data.steps}

    def plan_hold(self, data: HoldData, ctx: Context) -> Plan:
        return Plan([f"hold {data.model_dump()}"])

    @command(HoldData, resource=lambda d: f"hold:{d.key}")
    def hold(self, data: HoldData, ctx: Context) -> dict:
        """Not cancellable: holds its pool thread until released (or ``seconds``), whatever anyone asks."""
        self._mark(ctx.msg_id, "started")
        deadline = time.monotonic() + data.seconds
        released = (self._effects / f"{data.key}.release", self._effects / f"{ALL}.release")
        while time.monotonic() < deadline and not any(path.exists() for path in released):
            time.sleep(0.05)
        self._mark(ctx.msg_id, "finished")
        return {"held": data.key}

    def _mark(self, msg_id: str, what: str) -> None:
        (self._effects / f"{msg_id}.{what}").touch()


def release(effects: Path, key: str) -> None:
    (effects / f"{key}.release").touch()


def release_all(effects: Path) -> None:
    release(effects, ALL)


def marked(effects: Path, msg_id: str, what: str) -> bool:
    return (effects / f"{msg_id}.{what}").exists()
