"""kombu's Exchange and Queue for the names of the bus (``kvmworker.protocol.wire``, INTERFACE §4)."""

from __future__ import annotations

from kombu import Exchange, Queue

from kvmworker.protocol.wire import EXCHANGE_NAME, host_queue_name, reply_queue_name


def command_exchange() -> Exchange:
    return Exchange(EXCHANGE_NAME, type="direct", durable=True)


def host_queue(host: str) -> Queue:
    """The durable queue a host's worker consumes, bound with routing key ``<host>``."""
    return Queue(host_queue_name(host), exchange=command_exchange(), routing_key=host, durable=True)


def reply_queue() -> Queue:
    """One per client, private to the connection that declared it, gone when the client goes."""
    name = reply_queue_name()
    return Queue(name, exchange=None, routing_key=name, durable=False, exclusive=True, auto_delete=True)
