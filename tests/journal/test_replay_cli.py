"""``kvmworker replay`` as an operator runs it (a subprocess): short at volume, volatile fields ignored, --json,
and what the worker refused is not signed and sent again unless forced, after showing the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmworker.client import Client
from kvmworker.journal.store import JournalStore, journal_path
from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import unique
from tests.journal.effects import EffectsHandler, runs_of
from tests.support.processes import wait_for
from tests.trust.conftest import signer_of, write_private, write_trusted
from tests.trust.wire import RawPublisher

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
PINGS = 67


@dataclass
class Keys:
    """The orchestrator's side of signing (its private key, and the host's public reply key); the worker's files."""

    orchestrator: Path
    client_trust: Path
    worker_trust: Path
    reply: Path

    @classmethod
    def make(cls, where: Path, host: str) -> Keys:
        orchestrator, reply = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        return cls(
            write_private(where / "orchestrator-keys.json", "o1", {"o1": orchestrator}),
            write_trusted(where / "client-trusted.json", hosts={host: {"r1": reply}}),
            write_trusted(where / "worker-trusted.json", orchestrator={"o1": orchestrator}),
            write_private(where / "reply-keys.json", "r1", {"r1": reply}),
        )


@dataclass
class Host:
    settings: Settings
    running: RunningWorker
    effects: Path
    client: Client
    keys: Keys | None = None

    def cli(self, *args: str, stdin: str = "", keys: bool = True) -> subprocess.CompletedProcess:
        """``kvmworker ARGS`` against this host's journal and broker, without a terminal."""
        flags = ["--state-dir", str(self.settings.state_dir)]
        if args[0] == "replay":
            flags += ["--broker", self.settings.broker, "--timeout", "90"]
        if args[0] == "replay" and keys and self.keys is not None:
            flags += ["--keys-file", str(self.keys.orchestrator), "--trusted-keys-file", str(self.keys.client_trust)]
        return subprocess.run(
            [sys.executable, "-m", "kvmworker", *args, *flags],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ | {"KVMWORKER_LOG_LEVEL": "WARNING"},
        )


def host_fixture(amqp_url: str, tmp_path: Path, signed: bool) -> Iterator[Host]:
    effects = tmp_path / "effects"
    effects.mkdir()
    name = unique("kvt-jrc-")
    keys = Keys.make(tmp_path, name) if signed else None
    settings = Settings(
        host=name,
        broker=amqp_url,
        state_dir=tmp_path / "state",
        keys_file=keys.reply if keys else None,
        trusted_keys_file=keys.worker_trust if keys else None,
    )
    running = start_worker(settings, extra_handlers=[EffectsHandler(effects)])
    try:
        assert running.worker.connected.wait(15)
        signer = signer_of(keys.orchestrator, keys.client_trust) if keys else None
        with Client(amqp_url, signer=signer) as client:
            yield Host(settings, running, effects, client, keys)
    finally:
        running.stop(timeout=10)
        delete_host_queue(amqp_url, settings.host)


@pytest.fixture
def host(amqp_url: str, tmp_path: Path) -> Iterator[Host]:
    yield from host_fixture(amqp_url, tmp_path, signed=False)


@pytest.fixture
def keyed(amqp_url: str, tmp_path: Path) -> Iterator[Host]:
    yield from host_fixture(amqp_url, tmp_path, signed=True)


def pinged(host: Host, count: int) -> Path:
    for _ in range(count):
        assert host.client.call(host.settings.host, "SystemHandler", "ping", {}, timeout=90).code == Code.OK
    export = host.settings.state_dir.parent / "pings.jsonl"
    done = host.cli("journal", "export", "--handler", "SystemHandler", "--command", "ping", "--out", str(export))
    assert done.returncode == 0, done.stderr
    return export


def test_a_dry_run_of_67_pings_is_short_and_says_they_are_all_the_same_despite_uptime(host):
    export = pinged(host, PINGS)
    done = host.cli("replay", "--file", str(export), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= 5, done.stdout
    assert f"{PINGS} replayed: {PINGS} same reply, 0 different, 0 skipped" in lines[0]
    assert f"SystemHandler.ping: {PINGS} same" in done.stdout
    assert "not compared: data.uptime" in done.stdout


def test_without_the_default_ignores_uptime_differs_and_the_details_are_capped(host):
    export = pinged(host, 15)
    done = host.cli("replay", "--file", str(export), "--dry-run", "--no-default-ignore")
    assert done.returncode == 1
    headers = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert len(headers) == 10  # the first ten in detail
    assert "… 5 more differing or skipped not shown" in done.stdout
    assert "SystemHandler.ping: 0 same, 15 different (data.uptime ×15)" in done.stdout
    verbose = host.cli("replay", "--file", str(export), "--dry-run", "--no-default-ignore", "--verbose")
    assert len([line for line in verbose.stdout.splitlines() if line.startswith("== ")]) == 15


def test_ignore_takes_dotted_paths_and_json_gives_a_result_per_message_and_the_summary(host):
    for name in ("j1", "j2", "j3"):
        reply = host.client.call(host.settings.host, "EffectsHandler", "bump", {"name": name}, timeout=90)
        assert reply.code == Code.OK
    export = host.settings.state_dir.parent / "bumps.jsonl"
    assert host.cli("journal", "export", "--command", "bump", "--out", str(export)).returncode == 0
    differing = json.loads(host.cli("replay", "--file", str(export), "--yes", "--json").stdout)
    assert differing["summary"]["different"] == 3
    assert differing["summary"]["commands"]["EffectsHandler.bump"]["fields"] == {"data.run": 3}
    assert {r["differences"][0]["path"] for r in differing["results"]} == {"data.run"}
    done = host.cli("replay", "--file", str(export), "--yes", "--json", "--ignore", "data.run")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [r["outcome"] for r in document["results"]] == ["same"] * 3
    assert all(r["ignored"] == ["data.run"] for r in document["results"])
    assert document["summary"]["same"] == 3
    assert "data.run" in document["summary"]["not_compared"]
    assert runs_of(host.effects, "j1") == 3  # once recorded, twice replayed


def unsigned_touch(host: Host, name: str) -> str:
    """What an attacker without keys publishes with plain kombu: refused 20004, and journalled."""
    raw = RawPublisher(host.settings.broker_url, host.settings.host)
    try:
        out = raw.message({"handler": "EffectsHandler", "command": "touch", "data": {"name": name, "content": "pwn"}})
        raw.send(out)
    finally:
        raw.close()
    journal = JournalStore.open_existing(journal_path(host.settings.state_dir))
    assert wait_for(lambda: journal.find(out.msg_id) is not None, 15), "the refusal was never journalled"
    return out.msg_id


def refused_entry(host: Host, msg_id: str) -> dict:
    done = host.cli("journal", "show", msg_id)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_replay_does_not_sign_and_send_what_the_worker_refused_as_unauthenticated(keyed):
    msg_id = unsigned_touch(keyed, "laundered")
    entry = refused_entry(keyed, msg_id)
    assert (entry["state"], entry["code"]) == ("refused", Code.UNAUTHENTICATED)
    done = keyed.cli("replay", msg_id, "--yes")
    assert done.returncode == 1
    assert f"{msg_id} EffectsHandler.touch: skipped, refused by the worker with 20004" in done.stdout
    assert "(--force does)" in done.stdout
    assert "1 replayed: 0 same reply, 0 different, 1 skipped" in done.stdout
    assert not (keyed.effects / "laundered").exists()
    dry = keyed.cli("replay", msg_id, "--dry-run", "--json")
    assert dry.returncode == 1 and not (keyed.effects / "laundered").exists()
    [result] = json.loads(dry.stdout)["results"]
    assert result["outcome"] == "skipped" and "20004" in result["reason"]


def test_forced_replay_shows_the_real_command_and_its_sender_and_without_a_terminal_sends_nothing(keyed):
    msg_id = unsigned_touch(keyed, "shown")
    refused_entry(keyed, msg_id)
    done = keyed.cli("replay", msg_id, "--force", stdin="y\n")
    assert done.returncode == 1
    assert "EffectsHandler.touch" in done.stderr
    assert '"content": "pwn"' in done.stderr and '"name": "shown"' in done.stderr
    assert f"recorded on {keyed.settings.host}" in done.stderr
    assert "unsigned" in done.stderr
    assert "WARNING: refused by the worker with 20004" in done.stderr
    assert "not a terminal to ask on: nothing sent" in done.stderr
    assert not (keyed.effects / "shown").exists()
    forced = keyed.cli("replay", msg_id, "--force", "--yes")
    assert "1 replayed: 0 same reply, 1 different" in forced.stdout, forced.stdout + forced.stderr  # 20004 → 0
    assert (keyed.effects / "shown").read_text() == "pwn"  # the operator decided, having seen it
