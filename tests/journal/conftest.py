"""Journal fixtures: a pipeline wired as the worker wires it (real SQLite journal in tmp), brokers, requests."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmworker.app import Assembly, assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.journal.middleware import JournalMiddleware
from kvmworker.journal.store import journal_path
from kvmworker.settings import Settings
from tests.conftest import AMQP_URL, require_broker
from tests.journal.effects import EffectsHandler


@dataclass
class Wired:
    settings: Settings
    assembly: Assembly
    effects: Path

    @property
    def pipeline(self) -> Pipeline:
        return self.assembly.pipeline

    @property
    def journal(self) -> JournalMiddleware:
        return self.assembly.journal

    @property
    def journal_file(self) -> Path:
        return journal_path(self.settings.state_dir)

    def send(self, handler: str, command: str, data: dict[str, Any], **extra: Any) -> Any:
        return self.pipeline.handle(request(handler, command, data, **extra))


def request(handler: str, command: str, data: dict[str, Any], *, msg_id: str | None = None, **props: Any) -> Delivery:
    body = {"handler": handler, "command": command, "data": data}
    if msg_id:
        body["msg_id"] = msg_id
    if props.pop("dry_run", False):
        body["dry_run"] = True
    return Delivery(body=json.dumps(body).encode(), content_type="application/json", **props)


def new_id() -> str:
    return str(uuid.uuid4())


def wire(state_dir: Path, effects: Path, **settings: Any) -> Wired:
    effects.mkdir(exist_ok=True)
    config = Settings(host="kvt-journal", state_dir=state_dir, **settings)
    return Wired(config, assemble(config, extra_handlers=[EffectsHandler(effects)]), effects)


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """``main([...])`` sets up logging on the root logger, bound to this test's captured stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    w = wire(tmp_path / "state", tmp_path / "effects")
    yield w
    w.assembly.close()


@pytest.fixture
def amqp_url() -> str:
    return require_broker("amqp", AMQP_URL)
