"""Which hosts the bridge forwards to: those allowed (``--allowed-hosts``) whose queue already exists.

The bridge never creates a host's queue: a worker declares its own when it first starts, and the
queue is durable, so a known host whose worker is down still takes commands (they wait). A name
that no worker ever served is answered at once with 20001 (``field: host``), instead of a durable
queue that would keep the message for ever. How a queue is looked up depends on the broker: a
passive declare (AMQP, memory), or the exchange's binding table (Redis, where an empty list does
not exist as a key).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kombu import Connection

from kvmworker.bridge.body import HOST_NAME
from kvmworker.protocol.errors import InvalidRequest
from kvmworker.protocol.wire import EXCHANGE_NAME, host_queue_name
from kvmworker.transport.connection import connection_errors, every_url, open_connection

log = logging.getLogger("kvmworker.bridge")

KNOWN_FOR_S = 10.0  # a host seen once is not looked up again for this long


class UnknownHost(InvalidRequest):
    """No worker ever declared this host's queue."""


class HostDirectory:
    def __init__(self, broker_url: str, allowed: frozenset[str] | None = None, known_for_s: float = KNOWN_FOR_S):
        self._url = broker_url
        self._allowed = allowed
        self._known_for_s = known_for_s
        self._known: dict[str, float] = {}  # host → when its queue was last seen
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    def check_name(self, host: str) -> str:
        """A syntactically valid host that this bridge may serve (cheap: no broker)."""
        if not HOST_NAME.fullmatch(host):
            raise InvalidRequest(f"{host[:64]!r} is not a host name (1-200 of A-Z a-z 0-9 _ . : -)", field="host")
        if self._allowed is not None and host not in self._allowed:
            raise InvalidRequest(f"this bridge does not serve host {host!r} (see allowed_hosts)", field="host")
        return host

    def seen_recently(self, host: str) -> bool:
        """Never blocks (no lock: a dict read): True when ``check_exists`` would answer without the broker."""
        return time.monotonic() - self._known.get(host, float("-inf")) < self._known_for_s

    def check_exists(self, host: str) -> str:
        """Blocking (a broker round trip unless seen recently): 20001 if no worker has a queue for ``host``."""
        with self._lock:
            if self.seen_recently(host):
                return host
            exists = self._queue_exists(host)
            if exists:
                self._known[host] = time.monotonic()
        if exists is False:
            raise UnknownHost(
                f"no worker serves host {host!r}: its queue {host_queue_name(host)} does not exist (a host's "
                "worker creates it when it first starts; the bridge never does)",
                field="host",
            )
        return host

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.release()
                self._conn = None

    def _queue_exists(self, host: str) -> bool | None:
        """True/False, or None when the broker cannot be asked (the publish will report that)."""
        conn = self._connection()
        try:
            # several failover URLs: each tried once, at once, before the broker counts as unreachable
            conn.ensure_connection(max_retries=every_url(conn), interval_start=0, interval_step=0, timeout=2)
            channel = conn.channel()
            try:
                if hasattr(channel, "get_table") and conn.transport.driver_type == "redis":
                    return _bound_on_redis(channel, host)
                channel.queue_declare(queue=host_queue_name(host), passive=True)
                return True
            finally:
                _close_quietly(channel)
        except conn.channel_errors as exc:
            if "NOT_FOUND" in str(exc) or "404" in str(exc):
                return False
            log.warning("could not look up the queue of host %r: %s", host, exc)
            return None
        except connection_errors(conn) as exc:
            log.warning("could not look up the queue of host %r: %s", host, exc)
            self._reset()
            return None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = open_connection(self._url)
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None


def _bound_on_redis(channel, host: str) -> bool:
    try:
        table = channel.get_table(EXCHANGE_NAME)
    except Exception:  # kombu raises InconsistencyError when the exchange has no bindings at all
        return False
    queue = host_queue_name(host)
    return any(bound_queue == queue for _key, _pattern, bound_queue in table)


def _close_quietly(channel) -> None:
    with contextlib.suppress(Exception):  # a channel the broker closed after a failed passive declare
        channel.close()
