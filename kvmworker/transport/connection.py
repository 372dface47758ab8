"""Broker connections: the URL picks the transport; only the transport options differ."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

from kombu import Connection
from kombu.exceptions import OperationalError

from kvmworker.protocol.urls import mask_secrets
from kvmworker.transport.names import host_queue

HEARTBEAT_S = 30
# kombu's lock on its restore of unacked messages (``QoS.restore_visible``) expires after this many seconds: a
# worker killed while holding it (kombu's default 300 s) would stop every restore, its own messages' too, for five
# minutes. The lock only spares concurrent restores the work: each restore is a transaction that watches the
# records (one restorer moves a message back, any other finds its record gone), so a short one is safe.
RESTORE_LOCK_S = 10
# The memory transport polls; 2 ms keeps the embedded default responsive without spinning.
MEMORY_POLL_S = 0.002


def open_connection(url: str, *, confirms: bool = True, visibility_timeout: float | None = None) -> Connection:
    """A kombu connection (not yet connected) with the options each transport needs."""
    scheme = _scheme(url)
    options: dict[str, object] = {}
    heartbeat = 0
    if scheme in ("amqp", "amqps", "pyamqp"):
        options["confirm_publish"] = confirms
        heartbeat = HEARTBEAT_S
    elif scheme in ("redis", "rediss"):
        if visibility_timeout:
            options["visibility_timeout"] = visibility_timeout
        options["unacked_mutex_expire"] = RESTORE_LOCK_S
        # No polling_interval: kombu would make it BRPOP's timeout (a BRPOP every 50 ms, idle) and sleep that
        # long whenever a BRPOP timed out before a message came. Without it, one BRPOP a second (kombu's
        # ``brpop_timeout``) waits for the next message, and nothing sleeps.
    elif scheme == "memory":
        options["polling_interval"] = MEMORY_POLL_S
        url = url if url.rstrip("/") != "memory:" else "memory://localhost/"  # kombu warns about a missing host
    return _Connection(url, transport_options=options, heartbeat=heartbeat, connect_timeout=5)


class _Connection(Connection):
    """kombu's Connection, with kombu's Redis transport swapped for ``_redis_transport()``'s (also after a
    failover to the next URL, and in every clone: kombu picks the transport class through here each time)."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()
        if cls.__module__ == "kombu.transport.redis" and cls.__name__ == "Transport":  # not Sentinel's
            return _redis_transport(cls)
        return cls


@functools.cache
def _redis_transport(base: Any) -> Any:
    """kombu's Redis transport whose channels make one ``redis.Redis`` per connection pool.

    kombu's Redis channel makes a new ``redis.Redis`` (its table of response callbacks and all) for every
    delivery, publish and ack: a fifth of a worker's CPU per message, and as much of a client's. One per pool
    does the same (a client takes a pooled connection per command). Built when a Redis URL is first used, so
    that a worker on AMQP never imports redis.
    """

    class Channel(base.Channel):
        _sync_client: Any = None

        def _create_client(self, asynchronous: bool = False) -> Any:
            if asynchronous:  # BRPOP's own client: kombu keeps it
                return super()._create_client(asynchronous=True)
            pool, client = self.pool, self._sync_client
            if client is None or client.connection_pool is not pool:
                client = self._sync_client = super()._create_client()
            return client

    return type("Transport", (base,), {"Channel": Channel, "__module__": __name__})


def every_url(conn: Connection) -> int:
    """``max_retries`` for ``ensure_connection`` that tries each of several failover URLs once (at least 1)."""
    return max(len(conn.alt) - 1, 1)


def try_every_url(conn: Connection) -> None:
    """Connect to the current URL, else to each next failover URL in turn, once each, without pausing; else raise.

    For a caller that keeps one ``conn`` and paces its own rounds (the publisher): each failure moves ``conn``
    on to the next URL, so that the next round starts where this one stopped. (``ensure_connection`` with
    ``every_url`` sleeps 2 s before trying a single URL a second time.)
    """
    attempts = max(len(conn.alt), 1)
    for attempt in range(attempts):
        try:
            conn.ensure_connection(max_retries=0)
            return
        except Exception:
            conn.maybe_switch_next()
            if attempt == attempts - 1:
                raise


def delete_host_queue(url: str, host: str) -> None:
    """Remove a host's durable queue and what waits in it (a retired host, a test's or benchmark's own)."""
    if _scheme(url) == "memory":
        return  # it lives and dies with the process
    with open_connection(url) as conn:
        host_queue(host).bind(conn.default_channel).delete()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def connection_errors(conn: Connection) -> tuple[type[BaseException], ...]:
    """What a lost or refused broker connection raises (``ensure_connection`` gives up with OperationalError)."""
    return (*conn.connection_errors, *conn.channel_errors, OSError, OperationalError)


def log_connection_loss(log: logging.Logger, conn: Connection, exc: BaseException, what: str, retry_in: float) -> None:
    """A lost broker is a warning; anything else that stopped a consuming loop is an error with its traceback."""
    expected = isinstance(exc, connection_errors(conn))
    log.log(
        logging.WARNING if expected else logging.ERROR,
        "%s stopped (%s); reconnecting in %.1f s",
        what,
        mask_secrets(str(exc)),  # kombu and redis quote the URL they failed on
        retry_in,
        exc_info=not expected,
    )


class ConnectionLost(ConnectionError):
    """The connection a consumer was declared on is gone (its socket failed, or kombu dropped it)."""


def drain_this_connection(conn: Connection, raw: Any, timeout: float) -> None:
    """Wait for events on ``raw``, the very connection the consumer was declared on, and check its heartbeat.

    ``Connection.drain_events`` and ``heartbeat_check`` go through ``Connection.connection``, which quietly
    opens a new connection (to the next failover URL) when the current one was lost: a connection with no
    channel and no consumer, on which draining times out forever while heartbeats keep it alive. Going
    through the transport with ``raw`` instead, a lost connection raises, and the consumer is set up again.
    """
    if not conn.transport.verify_connection(raw):
        raise ConnectionLost(f"the connection to {conn.as_uri()} was lost")
    with contextlib.suppress(TimeoutError):
        conn.transport.drain_events(raw, timeout=timeout)
    conn.transport.heartbeat_check(raw, rate=2)
