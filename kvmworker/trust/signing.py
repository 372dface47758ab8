"""Ed25519 signatures over a canonical string: what a signature binds, and who can make one.

The orchestrator (client, bridge, ``call``, ``replay``) signs commands with its private key; workers hold only
its public keys, so nothing on a worker can sign a command. Each worker signs its replies with a private key of
its own; clients verify a reply with the public key of the host they sent the command to, so one worker's key
cannot vouch for another host's reply.

A command's signature binds the body (its SHA-256), the msg_id (AMQP ``message_id``), the target host,
``reply_to`` and the issued/expiry times; a reply's binds its body, ``correlation_id``, msg_id and the host
that answers. Header value: ``v2:<key id>:<hex signature>``. Times are canonicalised to six decimals so that a
float that crossed AMQP (a double) or Redis (JSON text) signs the same.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kvmworker.protocol.errors import Unauthenticated
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_ISSUED_AT, HEADER_SIGNATURE
from kvmworker.settings import Settings
from kvmworker.trust.keys import (
    REPLY_KEYS_NAME,
    KeyFileError,
    PrivateKeys,
    TrustedKeys,
    Watched,
    generate_key_file,
    load_private_keys,
    load_trusted_keys,
    new_key_id,
)

if TYPE_CHECKING:  # imported where a key verifies: a worker without keys never loads cryptography
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("kvmworker.trust")

VERSION = "v2"
COMMAND_DOMAIN = b"kvmworker-command-v2"
REPLY_DOMAIN = b"kvmworker-reply-v2"
SIGNATURE_HEX = 128

T = TypeVar("T", covariant=True)


class Source(Protocol[T]):
    """Keys as they are now: ``Watched`` (a file, reloaded when it changes) or ``Fixed`` (in memory)."""

    def current(self) -> T: ...


class Signer:
    """The orchestrator's side: signs commands, verifies each host's replies with that host's public keys."""

    def __init__(self, private: Source[PrivateKeys], trusted: Source[TrustedKeys]):
        self._private = private
        self._trusted = trusted

    def sign(self, body: bytes, msg_id: str, host: str, reply_to: str | None, headers: Mapping[str, Any]) -> dict:
        """The headers to add to a command whose ``headers`` already carry the issued/expiry times."""
        text = command_text(body, msg_id, host, reply_to, headers[HEADER_ISSUED_AT], headers[HEADER_EXPIRES_AT])
        return {HEADER_SIGNATURE: _header(self._private.current(), text)}

    def reply_is_authentic(
        self, body: bytes | str, correlation_id: str | None, msg_id: str | None, headers: Mapping, host: str
    ) -> bool:
        """True only for a reply signed by a key that ``host`` (the host the command went to) holds."""
        try:
            keys = self._trusted.current().hosts.get(host)
            if not keys:
                log.warning("no reply key for host %r in the trusted keys file: enrol it (docs/trust.md)", host)
                return False
            key_id, signature = parse_header((headers or {}).get(HEADER_SIGNATURE))
            _check(keys, key_id, signature, reply_text(body, correlation_id or "", msg_id or "", host))
        except (Unauthenticated, KeyFileError):
            return False
        return True


class WorkerKeys:
    """A worker's side: verifies commands with the orchestrator's public keys, signs replies with its own key."""

    def __init__(self, host: str, trusted: Source[TrustedKeys], reply: Source[PrivateKeys]):
        self.host = host
        self._trusted = trusted
        self._reply = reply

    def verify(self, body: bytes, msg_id: str | None, host: str, reply_to: str | None, headers: Mapping) -> None:
        """Raise ``Unauthenticated`` unless an orchestrator key signed exactly these values."""
        key_id, signature = parse_header(headers.get(HEADER_SIGNATURE))
        issued, expires = headers.get(HEADER_ISSUED_AT), headers.get(HEADER_EXPIRES_AT)
        text = command_text(body, msg_id or "", host, reply_to, issued, expires)
        try:
            keys = self._trusted.current().orchestrator
        except KeyFileError as exc:
            raise Unauthenticated(f"nothing verifies: {exc}") from None
        _check(keys, key_id, signature, text)

    def sign_reply(self, body: bytes, correlation_id: str, msg_id: str) -> dict:
        try:
            keys = self._reply.current()
        except KeyFileError as exc:
            # Sent unsigned (its caller drops it and gets -1) rather than not at all: a reply that cannot be
            # published goes back to the queue, and would come back forever.
            log.error("[%s] reply sent unsigned: %s", msg_id, exc)
            return {}
        return {HEADER_SIGNATURE: _header(keys, reply_text(body, correlation_id, msg_id, self.host))}

    def public(self) -> dict[str, str]:
        return self._reply.current().public()


# -- loading from settings -------------------------------------------------------------


def load_signer(settings: Settings) -> Signer | None:
    """The orchestrator's signer (client, bridge, ``call``, ``replay``), or None when ``keys_file`` is not set."""
    if settings.keys_file is None:
        return None
    if settings.trusted_keys_file is None:
        raise KeyFileError(
            "keys_file is set but trusted_keys_file is not: a signing client checks every reply against the"
            " public key of the host that sent it (the file's `hosts`; see docs/trust.md)"
        )
    private = Watched(settings.keys_file, load_private_keys)
    return Signer(private, Watched(settings.trusted_keys_file, load_trusted_keys))


def load_worker_keys(settings: Settings) -> WorkerKeys | None:
    """A worker's keys, or None (it runs open) when no ``trusted_keys_file`` is configured.

    Its reply key is ``keys_file``, else ``<state_dir>/reply-keys.json``, generated (0600) at the first start.
    """
    if settings.trusted_keys_file is None:
        if settings.keys_file is not None:
            raise KeyFileError(
                "keys_file is set but trusted_keys_file is not: the worker would run open. Commands are checked"
                " against the orchestrator's public keys in trusted_keys_file (docs/trust.md)"
            )
        return None
    trusted = Watched(settings.trusted_keys_file, load_worker_trust)
    reply_path = settings.keys_file or settings.state_dir / REPLY_KEYS_NAME
    if settings.keys_file is None and not reply_path.exists():
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate_key_file(reply_path, new_key_id(re.sub(r"[^A-Za-z0-9_.-]", "-", settings.host)[:48]))
        log.info("generated this host's reply key in %s", reply_path)
    keys = WorkerKeys(settings.host, trusted, Watched(reply_path, load_private_keys))
    log.info(
        "host %s signs its replies with %s; enrol its public key where commands are signed: %s",
        settings.host,
        reply_path,
        {"hosts": {settings.host: keys.public()}},
    )
    return keys


def load_worker_trust(path: Any) -> TrustedKeys:
    trusted = load_trusted_keys(path)
    if not trusted.orchestrator:
        raise KeyFileError(f"trusted keys file {path}: no `orchestrator` keys, so no command could ever run")
    return trusted


# -- the signature ---------------------------------------------------------------------


def _header(keys: PrivateKeys, text: bytes) -> str:
    return f"{VERSION}:{keys.active}:{keys.signing_key.sign(text).hex()}"


def parse_header(value: object) -> tuple[str, bytes]:
    if not value:
        raise Unauthenticated("the message is not signed (no x-kvm-signature header)")
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 3 or parts[0] != VERSION or len(parts[2]) != SIGNATURE_HEX:
        raise Unauthenticated(f"x-kvm-signature must read {VERSION}:<key id>:<{SIGNATURE_HEX} hex digits> (Ed25519)")
    try:
        return parts[1], bytes.fromhex(parts[2])
    except ValueError:
        raise Unauthenticated("x-kvm-signature: the signature is not hex") from None


def _check(keys: Mapping[str, Ed25519PublicKey], key_id: str, signature: bytes, text: bytes) -> None:
    from cryptography.exceptions import InvalidSignature

    key = keys.get(key_id)
    if key is None:
        raise Unauthenticated(f"unknown signing key id {key_id[:64]!r}")
    try:
        key.verify(signature, text)
    except InvalidSignature:
        raise Unauthenticated(
            "bad signature: the message or its headers were changed, or signed with another key"
        ) from None


def command_text(body: bytes, msg_id: str, host: str, reply_to: str | None, issued: object, expires: object) -> bytes:
    fields = [_digest(body), msg_id, host, reply_to or "", canonical_time(issued)]
    return _join(COMMAND_DOMAIN, [*fields, canonical_time(expires)])


def reply_text(body: bytes | str, correlation_id: str, msg_id: str, host: str) -> bytes:
    return _join(REPLY_DOMAIN, [_digest(body), correlation_id, msg_id, host])


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
