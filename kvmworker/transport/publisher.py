"""Publishing from any thread, over a few connections of its own, retried across broker hiccups.

With publisher confirms every publish waits for the broker's ack; a small pool of producers, each
on its own connection, lets concurrent publishers wait side by side instead of in one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty, LifoQueue
from typing import Any

from amqp.exceptions import MessageNacked
from kombu import Connection, Exchange, Producer

from kvmworker.protocol.codec import JSON_CONTENT_TYPE

log = logging.getLogger("kvmworker.publisher")

RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
DEFAULT_POOL_SIZE = 4
# RabbitMQ nacks publishes to a quorum queue while it elects a leader (its node died). kombu's retry policy
# publishes a nacked message again up to 3 times (~2 s); then this loop does it all again, up to 4 more
# rounds (~12 s in all). Always the same message and msg_id: the worker's journal dedupes.
NACK_RETRIES = 4
NACK_BACKOFF_MAX_S = 2.0


class Publisher:
    """Thread-safe; each producer is used by one thread at a time."""

    def __init__(self, connection: Connection, size: int = DEFAULT_POOL_SIZE):
        self._connection = connection
        self._size = size
        self._idle: LifoQueue[Producer] = LifoQueue()
        self._created: list[Producer] = []
        self._lock = threading.Lock()

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: Exchange | str = "",
        persistent: bool = False,
        headers: dict[str, Any] | None = None,
        declare: tuple[Any, ...] = (),
        **properties: Any,
    ) -> None:
        options = {
            "exchange": exchange,
            "routing_key": routing_key,
            "content_type": JSON_CONTENT_TYPE,
            "content_encoding": "utf-8",
            "delivery_mode": 2 if persistent else 1,
            "headers": headers or {},
            "retry": True,  # a lost connection (or confirm): the same message again, over the next failover URL
            "retry_policy": RETRY_POLICY,
            "declare": list(declare),
            **properties,
        }
        for attempt in range(NACK_RETRIES + 1):
            try:
                with self._producer() as producer:
                    producer.publish(body, **options)
                return
            except Exception as exc:  # kombu's retry re-raises a nack as OperationalError, from MessageNacked
                if not nacked(exc) or attempt == NACK_RETRIES:
                    raise
                pause = min(0.1 * 2**attempt, NACK_BACKOFF_MAX_S)
                log.warning(
                    "[%s] the broker nacked the publish (a queue electing its leader?); again in %.1f s",
                    properties.get("message_id"),
                    pause,
                )
                time.sleep(pause)

    @contextmanager
    def _producer(self) -> Iterator[Producer]:
        producer = self._acquire()
        try:
            yield producer
        finally:
            self._idle.put(producer)

    def _acquire(self) -> Producer:
        try:
            return self._idle.get_nowait()
        except Empty:
            pass
        with self._lock:
            if len(self._created) < self._size:
                producer = Producer(self._connection.clone(), auto_declare=False)
                self._created.append(producer)
                return producer
        return self._idle.get()

    def close(self) -> None:
        with self._lock:
            for producer in self._created:
                producer.connection.release()
            self._created.clear()
        self._connection.release()


def nacked(exc: BaseException) -> bool:
    """The broker refused the message (basic.nack), as opposed to a lost connection."""
    return isinstance(exc, MessageNacked) or isinstance(exc.__cause__, MessageNacked)
