"""The key file: formats, rotation with two keys, and refusals that stop a worker from starting half-configured."""

from __future__ import annotations

import base64
import json

import pytest

from kvmworker.trust.keys import KeyFileError, load_keys

SECRET = bytes(range(32))


def test_a_json_key_file_with_two_keys_lists_both_and_signs_with_the_active_one(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps({"active": "k2", "keys": {"k1": SECRET.hex(), "k2": base64.b64encode(SECRET[::-1]).decode()}})
    )
    ring = load_keys(path)
    assert ring.active == "k2"
    assert ring.active_secret == SECRET[::-1]
    assert ring.secret("k1") == SECRET


def test_a_toml_key_file_with_prefixed_secrets_is_read(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(
        f'active = "k1"\n[keys]\nk1 = "hex:{SECRET.hex()}"\nk2 = "base64:{base64.b64encode(SECRET).decode()}"\n'
    )
    ring = load_keys(path)
    assert ring.secret("k1") == ring.secret("k2") == SECRET


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"active": "k9", "keys": {"k1": SECRET.hex()}}, "active key"),
        ({"active": "k1", "keys": {"k1": "abcd"}}, "at least 16"),
        ({"active": "k1", "keys": {"k1": "not base64 at all!"}}, "neither hex nor base64"),
        ({"active": "k1", "keys": {}}, "keys"),
        ({"active": "k1", "keys": {"k1": SECRET.hex()}, "extra": 1}, "extra"),
        ({"active": "k 1", "keys": {"k 1": SECRET.hex()}}, "active"),
    ],
    ids=["active-missing", "too-short", "undecodable", "no-keys", "unknown-field", "bad-key-id"],
)
def test_an_invalid_key_file_is_refused_with_its_reason(tmp_path, content, reason):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(content))
    with pytest.raises(KeyFileError, match=reason):
        load_keys(path)


def test_a_missing_key_file_is_refused_rather_than_running_open(tmp_path):
    with pytest.raises(KeyFileError, match="No such file"):
        load_keys(tmp_path / "absent.json")


def test_the_secret_never_appears_in_the_error_message(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"active": "k9", "keys": {"k1": SECRET.hex()}}))
    with pytest.raises(KeyFileError) as err:
        load_keys(path)
    assert SECRET.hex() not in str(err.value)
