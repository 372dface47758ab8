"""The names on the bus (INTERFACE §4): the exchange, the queues and the extension headers, as plain strings.

Whoever speaks the protocol reads them here: the transport (``transport/names.py`` builds kombu's Exchange and
Queue from them), the client, the trust guard and the signer, the bridge's host lookup.
"""

from __future__ import annotations

import uuid

EXCHANGE_NAME = "kvmworker"
"""The durable direct exchange commands are published to, routing key ``<host>``."""
QUEUE_PREFIX = "kvmworker."
"""``kvmworker.<host>``: the durable queue a host's worker consumes."""
REPLY_PREFIX = "kvmworker.reply."
"""``kvmworker.reply.<random>``: a client's private reply queue."""

HEADER_HOST = "x-kvm-host"
HEADER_ISSUED_AT = "x-kvm-issued-at"
HEADER_EXPIRES_AT = "x-kvm-expires-at"
HEADER_SIGNATURE = "x-kvm-signature"
HEADER_MSG_ID = "x-kvm-msg-id"
"""On a reply: the msg_id of the command it answers."""


def host_queue_name(host: str) -> str:
    return QUEUE_PREFIX + host


def reply_queue_name() -> str:
    """A fresh name for one client's reply queue."""
    return REPLY_PREFIX + uuid.uuid4().hex
