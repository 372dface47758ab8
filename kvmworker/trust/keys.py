"""Ed25519 key files: this party's private keys, and the public keys it trusts. Both reloaded when they change.

Private keys (``keys_file``; the orchestrator's command keys, or a worker's own reply key), mode 0600::

    {"active": "o2", "keys": {"o1": "base64:<32-byte seed>", "o2": "-----BEGIN PRIVATE KEY-----\\n…"}}

Trusted public keys (``trusted_keys_file``)::

    {"orchestrator": {"o1": "base64:<32-byte public key>", "o2": "…"},          (a worker: who may command it)
     "hosts": {"kvm01": {"kvm01-r1": "base64:…"}, "kvm02": {…}}}                  (a client: each host's reply keys)

JSON, or the same in TOML (by the file's suffix). A key is ``base64:`` (or bare base64) of its 32 raw bytes, or
PEM (PKCS#8 private, SubjectPublicKeyInfo public). Several keys verify at once, so keys rotate without a flag day.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmworker.trust import KeyFileError

if TYPE_CHECKING:  # cryptography is imported where a key is read or made: a worker without keys never loads it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger("kvmworker.trust")
__all__ = ["KeyFileError"]  # defined in kvmworker.trust (light enough for the CLI to catch)

KEY_ID = r"^[A-Za-z0-9_.-]{1,64}$"
HOST_NAME = r"^[A-Za-z0-9_.-]{1,253}$"
KEY_BYTES = 32
# A random 32-byte seed has about 30 distinct byte values; fewer than this is a made-up key (zeros, a pattern).
MIN_DISTINCT_SEED_BYTES = 16
REPLY_KEYS_NAME = "reply-keys.json"


# -- the two files -------------------------------------------------------------


class _PrivateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: str = Field(pattern=KEY_ID)
    keys: dict[str, str] = Field(min_length=1)


class _TrustedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orchestrator: dict[str, str] = Field(default_factory=dict)
    hosts: dict[str, dict[str, str]] = Field(default_factory=dict)


@dataclass(frozen=True)
class PrivateKeys:
    """Key id → private key; the ``active`` one signs."""

    active: str
    keys: Mapping[str, Ed25519PrivateKey]

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyFileError(f"the active key {self.active!r} is not among the keys {sorted(self.keys)}")

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.keys[self.active]

    def public(self) -> dict[str, str]:
        """Key id → ``base64:`` public key: what the other side puts in its trusted keys file."""
        return {key_id: encode_public(key.public_key()) for key_id, key in self.keys.items()}


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys: the orchestrator's (commands) and each host's (replies)."""

    orchestrator: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    hosts: Mapping[str, Mapping[str, Ed25519PublicKey]] = field(default_factory=dict)


def load_private_keys(path: Path) -> PrivateKeys:
    """Read and check a private key file; it must be readable by its owner only (0600 or 0400)."""
    try:
        _check_private_mode(path)
        spec = _PrivateFile.model_validate(_parse(path))
        return PrivateKeys(spec.active, {key_id: decode_private(key_id, text) for key_id, text in spec.keys.items()})
    except (OSError, ValueError, ValidationError) as exc:
        raise KeyFileError(f"key file {path}: {_reason(exc)}") from None


def load_trusted_keys(path: Path) -> TrustedKeys:
    """Read and check a trusted (public) key file; nobody but its owner may write it."""
    try:
        _check_public_mode(path)
        spec = _TrustedFile.model_validate(_parse(path))
        hosts = {}
        for host, keys in spec.hosts.items():
            if not re.match(HOST_NAME, host):
                raise KeyFileError(f"host name {host[:64]!r} must match {HOST_NAME}")
            hosts[host] = {key_id: decode_public(key_id, text) for key_id, text in keys.items()}
        orchestrator = {key_id: decode_public(key_id, text) for key_id, text in spec.orchestrator.items()}
        return TrustedKeys(orchestrator, hosts)
    except (OSError, ValueError, ValidationError) as exc:
        raise KeyFileError(f"trusted keys file {path}: {_reason(exc)}") from None


# -- one key -------------------------------------------------------------------


def decode_private(key_id: str, text: str) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    load = partial(serialization.load_pem_private_key, password=None)
    seed = _key_bytes(key_id, text, load, Ed25519PrivateKey, "unencrypted PEM private key")
    if len(set(seed)) < MIN_DISTINCT_SEED_BYTES:
        raise KeyFileError(
            f"key {key_id!r} is weak (all zeros, or a pattern): generate one with `kvmworker keys generate`"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def decode_public(key_id: str, text: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = _key_bytes(key_id, text, serialization.load_pem_public_key, Ed25519PublicKey, "PEM public key")
    if not is_valid_point(raw):
        raise KeyFileError(f"key {key_id!r} is not a valid Ed25519 public key")
    if has_small_order(raw):
        # With such a key (the all-zero one among them) anybody can make signatures that verify.
        raise KeyFileError(f"key {key_id!r} is a weak Ed25519 public key (a point of small order)")
    return Ed25519PublicKey.from_public_bytes(raw)


def _key_bytes(key_id: str, text: str, load_pem: Callable[[bytes], object], kind: type, what: str) -> bytes:
    """The 32 raw bytes of a key written as PEM or as raw base64/hex (``_raw``)."""
    _check_key_id(key_id)
    text = text.strip()
    if not text.startswith("-----BEGIN"):
        return _raw(key_id, text)
    try:
        key = load_pem(text.encode())
    except (ValueError, TypeError):
        raise KeyFileError(f"key {key_id!r} is not a readable {what}") from None
    if not isinstance(key, kind):
        raise KeyFileError(f"key {key_id!r} is not an Ed25519 key")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return key.private_bytes_raw() if isinstance(key, Ed25519PrivateKey) else key.public_bytes_raw()


def encode_public(key: Ed25519PublicKey) -> str:
    return "base64:" + base64.b64encode(key.public_bytes_raw()).decode()


def encode_private(key: Ed25519PrivateKey) -> str:
    return "base64:" + base64.b64encode(key.private_bytes_raw()).decode()


def _raw(key_id: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(text.removeprefix("base64:"), validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"key {key_id!r} is neither PEM nor base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyFileError(f"key {key_id!r} is {len(raw)} bytes; an Ed25519 key is {KEY_BYTES}")
    return raw


def _check_key_id(key_id: str) -> None:
    if not re.match(KEY_ID, key_id):
        raise KeyFileError(f"key id {key_id[:64]!r} must match {KEY_ID}")


# -- points of small order (RFC 8032 decoding, then 8·P == identity) -------------------

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P:
        x = x * _SQRT_M1 % _P
        if (v * x * x - u) % _P:
            return None
    if x == 0 and sign:
        return None
    return (_P - x if x & 1 != sign else x), y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    return (x1 * y2 + y1 * x2) * pow(1 + t, -1, _P) % _P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P


def is_valid_point(raw: bytes) -> bool:
    return len(raw) == KEY_BYTES and _decode_point(raw) is not None


def has_small_order(raw: bytes) -> bool:
    point = _decode_point(raw)
    if point is None:
        return False
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


# -- file permissions ------------------------------------------------------------


def _check_private_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"it holds private keys but its mode is {mode:04o}: group and others must have no access (chmod 600)"
        )


def _check_public_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise KeyFileError(f"its mode is {mode:04o}: whoever may write it may add a key (chmod go-w)")


def _parse(path: Path) -> object:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import tomllib  # only a worker given a TOML key file needs the parser

    return tomllib.loads(text)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)


# -- writing key files -------------------------------------------------------------


def new_key_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


def generate_key_file(path: Path, key_id: str) -> PrivateKeys:
    """A new file with one fresh key, created 0600; never replaces an existing file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = PrivateKeys(key_id, {key_id: Ed25519PrivateKey.generate()})
    _check_key_id(key_id)
    write_private_keys(path, keys, replace=False)
    return keys


def add_key(path: Path, key_id: str, *, activate: bool) -> PrivateKeys:
    """Rotation: a fresh key added to an existing file (and made active when asked)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _check_key_id(key_id)
    current = load_private_keys(path)
    if key_id in current.keys:
        raise KeyFileError(f"key file {path}: key id {key_id!r} is already there")
    keys = PrivateKeys(key_id if activate else current.active, {**current.keys, key_id: Ed25519PrivateKey.generate()})
    write_private_keys(path, keys, replace=True)
    return keys


def write_private_keys(path: Path, keys: PrivateKeys, *, replace: bool) -> None:
    """Written to a 0600 temporary file beside ``path``, then moved into place (never half-written)."""
    encoded = {k: encode_private(v) for k, v in keys.keys.items()}
    if path.suffix == ".json":
        text = json.dumps({"active": keys.active, "keys": encoded}, indent=2)
    else:  # TOML, as the reader expects of any other suffix (ids and base64 need no escaping)
        text = f'active = "{keys.active}"\n[keys]\n' + "\n".join(f'"{k}" = "{v}"' for k, v in encoded.items())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails when the file exists: a key is never overwritten by accident
    finally:
        tmp.unlink(missing_ok=True)


# -- reloading ---------------------------------------------------------------------

T = TypeVar("T")


class Watched(Generic[T]):
    """A key file read again whenever it changes (a ``stat`` per use, no restart needed).

    A file that became unreadable or invalid verifies and signs nothing until it is fixed (it never
    falls back to the keys it held before: a removed key must stop verifying).
    """

    def __init__(self, path: Path, load: Callable[[Path], T]):
        self.path = path
        self._load = load
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._value: T | None = load(path)  # at start, a bad file is an error the caller sees
        self._error: str | None = None

    def current(self) -> T:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._reload(stamp)
        if self._value is None:
            raise KeyFileError(self._error or f"{self.path}: unusable")
        return self._value

    def _reload(self, stamp: tuple) -> None:
        self._stamp = stamp
        try:
            self._value, self._error = self._load(self.path), None
        except KeyFileError as exc:
            self._value, self._error = None, str(exc)
            log.error("%s; nothing is signed or verified with it until it is fixed", exc)
            return
        log.info("key file %s changed: reloaded", self.path)


class Fixed(Generic[T]):
    """Keys held in memory (tests, benchmarks): the same interface as ``Watched``."""

    def __init__(self, value: T):
        self._value = value

    def current(self) -> T:
        return self._value


def _stamp(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
