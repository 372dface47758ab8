"""Publishing from any thread over one connection of its own, retried across broker hiccups."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kombu import Connection, Exchange, Producer

from kvmworker.protocol.codec import JSON_CONTENT_TYPE

log = logging.getLogger("kvmworker.publisher")

RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


class Publisher:
    """Thread-safe: callers take turns on one producer (a publish is a fraction of a millisecond)."""

    def __init__(self, connection: Connection):
        self._connection = connection
        self._lock = threading.Lock()
        self._producer: Producer | None = None

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
        with self._lock:
            producer = self._ensure_producer()
            producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                content_type=JSON_CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2 if persistent else 1,
                headers=headers or {},
                retry=True,
                retry_policy=RETRY_POLICY,
                declare=list(declare),
                **properties,
            )

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._connection, auto_declare=False)
        return self._producer

    def close(self) -> None:
        with self._lock:
            self._producer = None
            self._connection.release()
