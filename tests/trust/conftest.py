"""Trust fixtures: key files, a worker that requires signatures, signed and unsigned callers."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.journal.middleware import JournalMiddleware
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.trust.keys import load_keys
from kvmworker.trust.signing import Signer
from tests.conftest import AMQP_URL, REDIS_URL, require_broker
from tests.support.handlers import ProbeHandler
from tests.trust.wire import RawPublisher

SIGNED_BROKERS = {"amqp": AMQP_URL, "redis": REDIS_URL}


def write_keys(path: Path, active: str, keys: dict[str, bytes]) -> Path:
    path.write_text(json.dumps({"active": active, "keys": {k: v.hex() for k, v in keys.items()}}))
    return path


@pytest.fixture(scope="session")
def secret_k1() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="session")
def secret_k2() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def keys_file(tmp_path: Path, secret_k1: bytes) -> Path:
    return write_keys(tmp_path / "keys.json", "k1", {"k1": secret_k1})


@pytest.fixture
def signer(keys_file: Path) -> Signer:
    return Signer(load_keys(keys_file))


@pytest.fixture(params=list(SIGNED_BROKERS), ids=list(SIGNED_BROKERS))
def real_broker(request: pytest.FixtureRequest) -> str:
    return require_broker(request.param, SIGNED_BROKERS[request.param])


class KeyedWorker:
    def __init__(self, running: RunningWorker, counters: Path):
        self.running = running
        self.counters = counters

    @property
    def journal(self) -> JournalMiddleware:
        return next(mw for mw in self.running.dispatcher.middleware.middleware if isinstance(mw, JournalMiddleware))


@pytest.fixture
def keyed_worker(real_broker: str, host: str, keys_file: Path, tmp_path: Path) -> Iterator[KeyedWorker]:
    counters = tmp_path / "counters"
    counters.mkdir()
    settings = Settings(host=host, broker_url=real_broker, state_dir=tmp_path / "state", keys_file=keys_file)
    running = start_worker(settings, extra_handlers=[ProbeHandler(counters)])
    assert running.worker.connected.wait(15), "worker did not connect to the broker"
    yield KeyedWorker(running, counters)
    running.stop(timeout=10)


@pytest.fixture
def signed_client(real_broker: str, signer: Signer) -> Iterator[Client]:
    with Client(real_broker, signer=signer) as c:
        yield c


@pytest.fixture
def raw(real_broker: str, host: str) -> Iterator[RawPublisher]:
    publisher = RawPublisher(real_broker, host)
    yield publisher
    publisher.close()
