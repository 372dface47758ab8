"""The key files: formats, weak and unsafe keys refused at load, reloading, and `kvmworker keys` as a subprocess."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kvmworker.trust.keys import KeyFileError, Watched, load_private_keys, load_trusted_keys
from tests.trust.conftest import public, write_private, write_trusted

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = bytes([1]) + bytes(31)  # the neutral point: [k]·A is itself for every k


def b64(raw: bytes) -> str:
    return "base64:" + base64.b64encode(raw).decode()


def private_file(path: Path, doc: dict, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path


def test_a_private_key_file_lists_every_key_and_signs_with_the_active_one(tmp_path):
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = load_private_keys(write_private(tmp_path / "k.json", "o2", {"o1": k1, "o2": k2}))
    assert keys.active == "o2"
    assert keys.signing_key.private_bytes_raw() == k2.private_bytes_raw()
    assert keys.public() == {"o1": public(k1), "o2": public(k2)}


def test_keys_may_be_given_as_pem_in_a_toml_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path / "k.toml"
    path.write_text(f'active = "o1"\n[keys]\no1 = """{pem.decode()}"""\n')
    path.chmod(0o600)
    assert load_private_keys(path).public() == {"o1": public(key)}
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    trusted = tmp_path / "t.toml"
    trusted.write_text(f'[orchestrator]\no1 = """{pub_pem.decode()}"""\n[hosts.kvm01]\nr1 = "{public(key)}"\n')
    loaded = load_trusted_keys(trusted)
    assert loaded.orchestrator["o1"].public_bytes_raw() == loaded.hosts["kvm01"]["r1"].public_bytes_raw()


def test_an_all_zero_private_key_is_refused_at_load(tmp_path):
    path = private_file(tmp_path / "k.json", {"active": "o1", "keys": {"o1": b64(bytes(32))}})
    with pytest.raises(KeyFileError, match="weak"):
        load_private_keys(path)


def test_a_patterned_private_key_is_refused_at_load(tmp_path):
    path = private_file(tmp_path / "k.json", {"active": "o1", "keys": {"o1": b64(b"kvm!" * 8)}})
    with pytest.raises(KeyFileError, match="weak"):
        load_private_keys(path)


def test_the_identity_public_key_would_verify_a_forgery_and_so_is_refused_at_load(tmp_path):
    # The attack the refusal prevents: with A = identity, (R = identity, S = 0) verifies for any message.
    forged = IDENTITY + bytes(32)
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(forged, b"NamespaceHandler.create anything")
    path = write_trusted_raw(tmp_path, {"orchestrator": {"o1": b64(IDENTITY)}})
    with pytest.raises(KeyFileError, match="weak"):
        load_trusted_keys(path)


@pytest.mark.parametrize(
    "raw_hex",
    [
        "00" * 32,  # all zero (order 4)
        "ec" + "ff" * 30 + "7f",  # -1 (order 2)
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8, sign bit set
    ],
    ids=["zero", "minus-one", "order-8", "order-8-negated"],
)
def test_every_public_key_of_small_order_is_refused_at_load(tmp_path, raw_hex):
    path = write_trusted_raw(tmp_path, {"hosts": {"kvm01": {"r1": b64(bytes.fromhex(raw_hex))}}})
    with pytest.raises(KeyFileError, match="weak"):
        load_trusted_keys(path)


def test_the_all_zero_public_key_also_verifies_a_forgery_with_the_library_which_is_why_it_is_refused():
    with pytest.raises(InvalidSignature):  # a real key does not accept the forgery …
        Ed25519PrivateKey.generate().public_key().verify(IDENTITY + bytes(32), b"x")
    Ed25519PublicKey.from_public_bytes(bytes(32)).verify(IDENTITY + bytes(32), b"x")  # … the zero key does


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_private_key_file_others_can_read_is_refused(tmp_path, mode):
    path = write_private(tmp_path / "k.json", "o1", {"o1": Ed25519PrivateKey.generate()})
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"mode is {mode:04o}"):
        load_private_keys(path)


def test_a_trusted_keys_file_others_can_write_is_refused(tmp_path):
    path = write_trusted(tmp_path / "t.json", orchestrator={"o1": Ed25519PrivateKey.generate()})
    path.chmod(0o666)
    with pytest.raises(KeyFileError, match="may add a key"):
        load_trusted_keys(path)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"active": "o9", "keys": {"o1": "K"}}, "active key"),
        ({"active": "o1", "keys": {"o1": b64(os.urandom(16))}}, "16 bytes"),
        ({"active": "o1", "keys": {"o1": "not base64 at all!"}}, "neither PEM nor base64"),
        ({"active": "o1", "keys": {"o1": "hex:" + os.urandom(32).hex()}}, "neither PEM nor base64"),
        ({"active": "o1", "keys": {}}, "keys"),
        ({"active": "o1", "keys": {"o1": "K"}, "extra": 1}, "extra"),
        ({"active": "o 1", "keys": {"o 1": "K"}}, "active"),
    ],
    ids=["active-missing", "too-short", "undecodable", "old-hmac-hex-secret", "no-keys", "unknown-field", "bad-id"],
)
def test_an_invalid_private_key_file_is_refused_with_its_reason(tmp_path, doc, reason):
    good = b64(Ed25519PrivateKey.generate().private_bytes_raw())
    doc = json.loads(json.dumps(doc).replace('"K"', json.dumps(good)))
    with pytest.raises(KeyFileError, match=reason):
        load_private_keys(private_file(tmp_path / "k.json", doc))


def test_a_missing_key_file_is_refused_rather_than_running_open(tmp_path):
    with pytest.raises(KeyFileError, match="No such file"):
        load_private_keys(tmp_path / "absent.json")


def test_the_private_key_never_appears_in_the_error_message(tmp_path):
    key = b64(Ed25519PrivateKey.generate().private_bytes_raw())
    path = private_file(tmp_path / "k.json", {"active": "o9", "keys": {"o1": key}})
    with pytest.raises(KeyFileError) as err:
        load_private_keys(path)
    assert key[7:20] not in str(err.value)


def test_a_changed_file_is_read_again_and_a_broken_one_yields_no_keys_instead_of_the_old_ones(tmp_path):
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = write_trusted(tmp_path / "t.json", orchestrator={"o1": k1, "o2": k2})
    watched = Watched(path, load_trusted_keys)
    assert set(watched.current().orchestrator) == {"o1", "o2"}
    write_trusted(path, orchestrator={"o2": k2})
    assert set(watched.current().orchestrator) == {"o2"}
    path.write_text("{")
    with pytest.raises(KeyFileError):
        watched.current()
    write_trusted(path, orchestrator={"o1": k1})
    assert set(watched.current().orchestrator) == {"o1"}


def write_trusted_raw(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "trusted.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    return path


# -- the CLI, as an operator runs it -------------------------------------------------


def kvmworker(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmworker", *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_generate_writes_a_0600_file_and_prints_the_public_key_the_file_holds(tmp_path):
    path = tmp_path / "orchestrator-keys.json"
    done = kvmworker("keys", "generate", str(path), "--id", "o1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(done.stdout) == load_private_keys(path).public()


def test_keys_generate_writes_toml_when_the_file_name_says_so(tmp_path):
    path = tmp_path / "orchestrator-keys.toml"
    assert kvmworker("keys", "generate", str(path), "--id", "o.1", cwd=tmp_path).returncode == 0
    assert kvmworker("keys", "generate", str(path), "--id", "o.2", "--add", cwd=tmp_path).returncode == 0
    assert path.read_text().startswith('active = "o.1"')
    assert sorted(load_private_keys(path).keys) == ["o.1", "o.2"]


def test_keys_generate_never_overwrites_and_add_rotates_without_losing_the_old_key(tmp_path):
    path = tmp_path / "k.json"
    assert kvmworker("keys", "generate", str(path), "--id", "o1", cwd=tmp_path).returncode == 0
    before = load_private_keys(path).public()
    again = kvmworker("keys", "generate", str(path), "--id", "o1", cwd=tmp_path)
    assert again.returncode == 64 and "exists" in again.stderr
    added = kvmworker("keys", "generate", str(path), "--id", "o2", "--add", "--activate", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    after = load_private_keys(path)
    assert after.active == "o2" and after.public()["o1"] == before["o1"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_public_prints_a_workers_reply_key_as_the_hosts_entry_a_client_trusts(tmp_path):
    state = tmp_path / "state"
    assert kvmworker("keys", "generate", str(state / "reply-keys.json"), cwd=tmp_path).returncode == 0
    done = kvmworker("keys", "public", "--state-dir", str(state), "--host", "kvm07", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trusted = write_trusted_raw(tmp_path, json.loads(done.stdout))
    assert set(load_trusted_keys(trusted).hosts["kvm07"]) == set(load_private_keys(state / "reply-keys.json").keys)


def test_keys_public_prints_orchestrator_keys_for_the_workers_file(tmp_path):
    path = tmp_path / "k.json"
    kvmworker("keys", "generate", str(path), "--id", "o1", cwd=tmp_path)
    done = kvmworker("keys", "public", "--keys-file", str(path), "--orchestrator", cwd=tmp_path)
    trusted = write_trusted_raw(tmp_path, json.loads(done.stdout))
    assert list(load_trusted_keys(trusted).orchestrator) == ["o1"]
