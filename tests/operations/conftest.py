"""Workers with the long-running test commands (SlowHandler) on the shared RabbitMQ, and a client for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmworker.client import Client, PendingCall
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.events.conftest import follow  # noqa: F401  (the fixture, for the event tests here)
from tests.operations.handlers import SlowHandler, marked, release_all
from tests.support.processes import wait_for

WAIT_S = 30
"""How long a test waits for something that happens within a second or two on a quiet machine."""


@dataclass
class Ops:
    """A running worker with SlowHandler, and a client calling it."""

    running: RunningWorker
    client: Client
    host: str
    effects: Path

    def call(self, handler: str, command: str, data: dict[str, Any] | None = None, **kw: Any) -> Reply:
        return self.client.call(self.host, handler, command, data or {}, timeout=WAIT_S, **kw)

    def system(self, command: str, **data: Any) -> Reply:
        return self.call("SystemHandler", command, data)

    def submit(self, command: str, timeout: float = 300, handler: str = "SlowHandler", **data: Any) -> PendingCall:
        """Sent now; its reply resolves ``.future`` later. ``timeout`` is how long the caller says it waits."""
        envelope = Envelope(handler=handler, command=command, data=data, timeout=timeout)
        return self.client.submit(self.host, envelope, timeout=timeout)

    def started(self, pending: PendingCall) -> bool:
        return wait_for(lambda: marked(self.effects, pending.msg_id, "started"), WAIT_S)

    def operation(self, msg_id: str, state: str = "running") -> dict | None:
        ops = self.system("operations", state=state).data["operations"]
        return next((op for op in ops if op["msg_id"] == msg_id), None)

    def wait_for_state(self, msg_id: str, state: str) -> dict:
        found: list[dict] = []

        def seen() -> bool:
            op = self.operation(msg_id)
            if op is not None and op["state"] == state:
                found.append(op)
            return bool(found)

        assert wait_for(seen, WAIT_S, interval=0.1), f"{msg_id} never {state}: {self.operation(msg_id)}"
        return found[0]


def reply_of(pending: PendingCall, timeout: float = WAIT_S) -> Reply:
    return pending.future.result(timeout)


@pytest.fixture
def amqp() -> str:
    return require_broker("amqp", AMQP_URL)


@pytest.fixture
def start_ops(amqp: str, tmp_path: Path) -> Iterator[Callable[..., Ops]]:
    """``start_ops(workers=4)``: an in-process worker on RabbitMQ with SlowHandler; stopped afterwards, its
    commands released or cancelled first so that the stop does not wait for them."""
    made: list[Ops] = []

    def start(workers: int = 4) -> Ops:
        host = unique("kvt-ops-")
        effects = tmp_path / f"effects-{host}"
        effects.mkdir()
        settings = Settings(host=host, broker_url=amqp, state_dir=tmp_path / f"state-{host}", workers=workers)
        running = start_worker(settings, extra_handlers=[SlowHandler(effects)])
        assert running.worker.connected.wait(WAIT_S), "worker did not connect to the broker"
        ops = Ops(running, Client(amqp), host, effects)
        made.append(ops)
        return ops

    yield start
    for ops in made:
        _wind_down(ops)
        ops.client.close()
        ops.running.stop(WAIT_S)
        delete_host_queue(amqp, ops.host)


def _wind_down(ops: Ops) -> None:
    """Whatever a failed test left running: every hold released, the rest cancelled."""
    release_all(ops.effects)
    for op in ops.system("operations").data["operations"]:
        if op["cancellable"] or op["state"] == "queued":
            ops.system("cancel", msg_id=op["msg_id"])
