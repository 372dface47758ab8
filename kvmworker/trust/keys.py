"""The key file: key id → shared secret, one of them active (it signs); every listed key verifies.

Two keys can be listed at once so that a key is rotated without a flag day: add the new key
everywhere, switch ``active`` everywhere, then remove the old key.

    {"active": "k2", "keys": {"k1": "hex:…", "k2": "base64:…"}}     (JSON, or the same in TOML)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MIN_SECRET_BYTES = 16
KEY_ID = r"^[A-Za-z0-9_.-]{1,64}$"
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


class KeyFileError(ValueError):
    """The key file is missing, unreadable or invalid: the worker refuses to start rather than run open."""


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: str = Field(pattern=KEY_ID)
    keys: dict[str, str] = Field(min_length=1)


@dataclass(frozen=True)
class KeyRing:
    active: str
    secrets: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if self.active not in self.secrets:
            raise KeyFileError(f"the active key {self.active!r} is not among the keys {sorted(self.secrets)}")

    def secret(self, key_id: str) -> bytes | None:
        return self.secrets.get(key_id)

    @property
    def active_secret(self) -> bytes:
        return self.secrets[self.active]


def load_keys(path: Path) -> KeyRing:
    """Read and check the key file once (at start); secrets are never logged."""
    try:
        spec = _KeyFile.model_validate(_parse(path))
        return KeyRing(spec.active, {key_id: decode_secret(key_id, text) for key_id, text in spec.keys.items()})
    except (OSError, ValueError, ValidationError) as exc:
        raise KeyFileError(f"key file {path}: {_reason(exc)}") from None


def decode_secret(key_id: str, text: str) -> bytes:
    """``hex:…`` or ``base64:…``; without a prefix, hex when it reads as hex, else base64."""
    if not re.match(KEY_ID, key_id):
        raise KeyFileError(f"key id {key_id!r} must match {KEY_ID}")
    secret = _decode(text.strip())
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(f"key {key_id!r} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required")
    return secret


def _decode(text: str) -> bytes:
    try:
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        if text.startswith("base64:"):
            return base64.b64decode(text[7:], validate=True)
        return bytes.fromhex(text) if _HEX.match(text) else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError("a secret is neither hex nor base64") from None


def _parse(path: Path) -> object:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)
