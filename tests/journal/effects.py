"""A test-only handler whose effects a test can count and undo: files in a directory the test owns."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from kvmworker.dispatch.commands import Plan, command
from kvmworker.dispatch.context import Context
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.errors import InvalidParameter

log = logging.getLogger("tests.effects")

NAME = r"^[a-z0-9-]{1,40}$"


class BumpData(BaseModel):
    name: str = Field(pattern=NAME)
    sleep: float = Field(default=0, ge=0, le=60)


class TouchData(BaseModel):
    name: str = Field(pattern=NAME)
    content: str = Field(default="", max_length=1000)


class LoginData(BaseModel):
    username: str
    password: str
    options: dict = Field(default_factory=dict)


class EffectsHandler:
    """``bump`` appends a line (count the runs), then sleeps; ``touch`` creates a file; ``login`` returns a token;
    ``issue`` (read-only) too."""

    name = "EffectsHandler"

    def __init__(self, directory: Path):
        self._dir = directory
        self._lock = threading.Lock()

    @command(BumpData)  # no resource: duplicates may run side by side unless the journal stops them
    def bump(self, data: BumpData, ctx: Context) -> dict:
        with self._lock, (self._dir / f"{data.name}.count").open("a") as f:
            f.write(f"{ctx.msg_id}\n")
        time.sleep(data.sleep)
        return {"name": data.name, "run": uuid.uuid4().hex}

    def plan_bump(self, data: BumpData, ctx: Context) -> Plan:
        return Plan([f"append a line to {data.name}.count"])

    @command(TouchData, resource=lambda d: f"file:{d.name}")
    def touch(self, data: TouchData, ctx: Context) -> dict:
        path = self._dir / data.name
        created = not path.exists()
        path.write_text(data.content)
        return {"file": path.name, "created": created}

    def plan_touch(self, data: TouchData, ctx: Context) -> Plan:
        return Plan([f"create {data.name}" if not (self._dir / data.name).exists() else "nothing to do"])

    @command(LoginData)
    def login(self, data: LoginData, ctx: Context) -> dict:
        return {"user": data.username, "token": f"tok-{data.password[::-1]}"}

    def plan_login(self, data: LoginData, ctx: Context) -> Plan:
        return Plan([f"a token for {data.username}"])

    @command(mutates=False)
    def issue(self, data: object, ctx: Context) -> dict:
        """Read-only, with a secret in its reply only."""
        return {"token": "tok-kvt-read-only-secret"}

    @command(mutates=False)
    def fail(self, data: object, ctx: Context) -> dict:
        log.info("about to refuse")
        raise InvalidParameter("refused on purpose", field="name")


def runs_of(directory: Path, name: str) -> int:
    path = directory / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


class PauseBeforePublish(Middleware[None]):
    """After the journal recorded the reply, before it is published and acked: touch a marker, then stall.

    The window a SIGKILL must hit to show that a redelivery is answered from the journal.
    """

    def __init__(self, marker: Path, seconds: float = 60):
        self._marker = marker
        self._seconds = seconds

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        self._marker.write_text(msg.msg_id)
        time.sleep(self._seconds)
