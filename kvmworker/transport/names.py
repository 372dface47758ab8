"""Every exchange and queue name on the bus comes from here (INTERFACE §4)."""

from __future__ import annotations

import uuid

from kombu import Exchange, Queue

EXCHANGE_NAME = "kvmworker"
QUEUE_PREFIX = "kvmworker."
REPLY_PREFIX = "kvmworker.reply."

# Extension headers (INTERFACE §4).
HEADER_HOST = "x-kvm-host"
HEADER_ISSUED_AT = "x-kvm-issued-at"
HEADER_EXPIRES_AT = "x-kvm-expires-at"
HEADER_SIGNATURE = "x-kvm-signature"
HEADER_MSG_ID = "x-kvm-msg-id"


def command_exchange() -> Exchange:
    return Exchange(EXCHANGE_NAME, type="direct", durable=True)


def host_queue_name(host: str) -> str:
    return QUEUE_PREFIX + host


def host_queue(host: str) -> Queue:
    """The durable queue a host's worker consumes, bound with routing key ``<host>``."""
    return Queue(host_queue_name(host), exchange=command_exchange(), routing_key=host, durable=True)


def reply_queue() -> Queue:
    """One per client, private to the connection that declared it, gone when the client goes."""
    name = REPLY_PREFIX + uuid.uuid4().hex
    return Queue(name, exchange=None, routing_key=name, durable=False, exclusive=True, auto_delete=True)
