"""Trust fixtures: key files as `kvmworker keys` writes them, a worker that requires signatures, signed callers.

Who holds what, as in production: the orchestrator's private key (``keys_file``) and the hosts' public reply
keys (``client_trust``) on the caller's side; the orchestrator's public key (``worker_trust``) and the host's
own private reply key (``reply_keys_file``) on the worker's side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kvmworker.client import Client
from kvmworker.journal.middleware import JournalMiddleware
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.trust.keys import PrivateKeys, Watched, encode_public, load_private_keys, load_trusted_keys
from kvmworker.trust.keys import write_private_keys as _write_private
from kvmworker.trust.signing import Signer
from tests.conftest import AMQP_URL, REDIS_URL, require_broker
from tests.support.handlers import ProbeHandler
from tests.trust.wire import RawPublisher

SIGNED_BROKERS = {"amqp": AMQP_URL, "redis": REDIS_URL}


def write_private(path: Path, active: str, keys: dict[str, Ed25519PrivateKey]) -> Path:
    """A private key file (0600), replaced atomically when it exists."""
    _write_private(path, PrivateKeys(active, keys), replace=True)
    return path


def public(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return encode_public(key.public_key() if isinstance(key, Ed25519PrivateKey) else key)


def write_trusted(
    path: Path,
    orchestrator: dict[str, Ed25519PrivateKey] | None = None,
    hosts: dict[str, dict[str, Ed25519PrivateKey]] | None = None,
) -> Path:
    """A trusted keys file holding only the public halves of the keys given."""
    doc = {
        "orchestrator": {k: public(v) for k, v in (orchestrator or {}).items()},
        "hosts": {h: {k: public(v) for k, v in keys.items()} for h, keys in (hosts or {}).items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def signer_of(keys_file: Path, trusted_file: Path) -> Signer:
    return Signer(Watched(keys_file, load_private_keys), Watched(trusted_file, load_trusted_keys))


@pytest.fixture(scope="session")
def key_o1() -> Ed25519PrivateKey:
    """The orchestrator's command key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def key_o2() -> Ed25519PrivateKey:
    """The orchestrator's next command key (rotation)."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def reply_key() -> Ed25519PrivateKey:
    """The worker's own reply key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys_file(tmp_path: Path, key_o1: Ed25519PrivateKey) -> Path:
    return write_private(tmp_path / "orchestrator-keys.json", "o1", {"o1": key_o1})


@pytest.fixture
def worker_trust(tmp_path: Path, key_o1: Ed25519PrivateKey) -> Path:
    return write_trusted(tmp_path / "worker-trusted.json", orchestrator={"o1": key_o1})


@pytest.fixture
def reply_keys_file(tmp_path: Path, reply_key: Ed25519PrivateKey) -> Path:
    return write_private(tmp_path / "reply-keys.json", "r1", {"r1": reply_key})


@pytest.fixture
def client_trust(tmp_path: Path, host: str, reply_key: Ed25519PrivateKey) -> Path:
    return write_trusted(tmp_path / "client-trusted.json", hosts={host: {"r1": reply_key}})


@pytest.fixture
def signer(keys_file: Path, client_trust: Path) -> Signer:
    return signer_of(keys_file, client_trust)


@pytest.fixture(params=list(SIGNED_BROKERS), ids=list(SIGNED_BROKERS))
def real_broker(request: pytest.FixtureRequest) -> str:
    return require_broker(request.param, SIGNED_BROKERS[request.param])


class KeyedWorker:
    def __init__(self, running: RunningWorker, counters: Path):
        self.running = running
        self.counters = counters

    @property
    def journal(self) -> JournalMiddleware:
        return self.running.assembly.journal


@pytest.fixture
def keyed_worker(
    real_broker: str, host: str, worker_trust: Path, reply_keys_file: Path, tmp_path: Path
) -> Iterator[KeyedWorker]:
    counters = tmp_path / "counters"
    counters.mkdir()
    settings = Settings(
        host=host,
        broker_url=real_broker,
        state_dir=tmp_path / "state",
        keys_file=reply_keys_file,
        trusted_keys_file=worker_trust,
    )
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
