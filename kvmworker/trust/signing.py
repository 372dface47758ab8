"""HMAC-SHA256 over a canonical string: what a signature binds, and nothing else.

A command's signature binds the body (its SHA-256), the msg_id (AMQP ``message_id``), the target
host, ``reply_to`` and the issued/expiry times; a reply's binds its body, ``correlation_id`` and msg_id.
Header value: ``v1:<key id>:<hex mac>``. Times are canonicalised to six decimals so that a float
that crossed AMQP (a double) or Redis (JSON text) signs the same.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvmworker.protocol.errors import Unauthenticated
from kvmworker.transport.names import HEADER_EXPIRES_AT, HEADER_ISSUED_AT, HEADER_SIGNATURE
from kvmworker.trust.keys import KeyRing, load_keys

VERSION = "v1"
COMMAND_DOMAIN = b"kvmworker-command-v1"
REPLY_DOMAIN = b"kvmworker-reply-v1"


class Signer:
    """Signs with the active key, verifies with any listed key. Shared by clients and the worker."""

    def __init__(self, keys: KeyRing):
        self._keys = keys

    # -- commands (client signs, worker verifies) ------------------------------

    def sign(self, body: bytes, msg_id: str, host: str, reply_to: str | None, headers: Mapping[str, Any]) -> dict:
        """The headers to add to a command whose ``headers`` already carry the issued/expiry times."""
        text = command_text(body, msg_id, host, reply_to, headers[HEADER_ISSUED_AT], headers[HEADER_EXPIRES_AT])
        return {HEADER_SIGNATURE: self._header(text)}

    def verify(self, body: bytes, msg_id: str | None, host: str, reply_to: str | None, headers: Mapping) -> None:
        """Raise ``Unauthenticated`` unless the signature header is one of ours over exactly these values."""
        key_id, mac = self._parse(headers.get(HEADER_SIGNATURE))
        issued, expires = headers.get(HEADER_ISSUED_AT), headers.get(HEADER_EXPIRES_AT)
        text = command_text(body, msg_id or "", host, reply_to, issued, expires)
        self._check(key_id, mac, text)

    # -- replies (worker signs, client verifies) -------------------------------

    def sign_reply(self, body: bytes, correlation_id: str, msg_id: str) -> dict:
        return {HEADER_SIGNATURE: self._header(reply_text(body, correlation_id, msg_id))}

    def reply_is_authentic(
        self, body: bytes | str, correlation_id: str | None, msg_id: str | None, headers: Mapping
    ) -> bool:
        try:
            key_id, mac = self._parse((headers or {}).get(HEADER_SIGNATURE))
            self._check(key_id, mac, reply_text(body, correlation_id or "", msg_id or ""))
        except Unauthenticated:
            return False
        return True

    # -- the MAC ---------------------------------------------------------------

    def _header(self, text: bytes) -> str:
        return f"{VERSION}:{self._keys.active}:{_mac(self._keys.active_secret, text)}"

    def _parse(self, value: object) -> tuple[str, str]:
        if not value:
            raise Unauthenticated("the message is not signed (no x-kvm-signature header)")
        parts = value.split(":") if isinstance(value, str) else []
        if len(parts) != 3 or parts[0] != VERSION:
            raise Unauthenticated(f"x-kvm-signature must read {VERSION}:<key id>:<hex mac>")
        return parts[1], parts[2]

    def _check(self, key_id: str, mac: str, text: bytes) -> None:
        secret = self._keys.secret(key_id)
        if secret is None:
            raise Unauthenticated(f"unknown signing key id {key_id[:64]!r}")
        # compare_digest on ASCII strings: constant time whatever the position of the first difference
        if not hmac.compare_digest(_mac(secret, text), mac.lower().encode("ascii", "replace").decode()):
            raise Unauthenticated("bad signature: the message or its headers were changed, or signed with another key")


def load_signer(keys_file: Path | None) -> Signer | None:
    """The signer of ``keys_file``, or None (run open) when no key file is configured."""
    return Signer(load_keys(keys_file)) if keys_file else None


def command_text(body: bytes, msg_id: str, host: str, reply_to: str | None, issued: object, expires: object) -> bytes:
    fields = [_digest(body), msg_id, host, reply_to or "", canonical_time(issued)]
    return _join(COMMAND_DOMAIN, [*fields, canonical_time(expires)])


def reply_text(body: bytes | str, correlation_id: str, msg_id: str) -> bytes:
    return _join(REPLY_DOMAIN, [_digest(body), correlation_id, msg_id])


def canonical_time(value: object) -> str:
    """Seconds since the epoch with six decimals; a missing or non-numeric time cannot be signed."""
    if value is None or isinstance(value, bool):
        raise Unauthenticated("issued/expiry time missing (x-kvm-issued-at / x-kvm-expires-at)")
    try:
        seconds = float(value)  # int, float, AMQP decimal or text
    except (TypeError, ValueError):
        raise Unauthenticated(f"issued/expiry time is not a number: {value!r:.40}") from None
    if not math.isfinite(seconds):
        raise Unauthenticated("issued/expiry time is not finite")
    return f"{seconds:.6f}"


def _join(domain: bytes, fields: list[str]) -> bytes:
    # Newline-separated: none of the fields may contain one, so no two field lists give the same text.
    if any("\n" in f for f in fields):
        raise Unauthenticated("a signed field contains a newline")
    return domain + b"\n" + "\n".join(fields).encode("utf-8", "surrogateescape")


def _digest(body: bytes | str) -> str:
    # kombu hands some transports' bodies over as text: the bytes on the wire were its UTF-8 encoding
    return hashlib.sha256(body.encode() if isinstance(body, str) else body).hexdigest()


def _mac(secret: bytes, text: bytes) -> str:
    return hmac.new(secret, text, hashlib.sha256).hexdigest()
