"""``/readyz``: can the broker be reached? Checked at most once a second, off the event loop."""

from __future__ import annotations

import threading
import time

from kvmworker.protocol.urls import mask_url
from kvmworker.transport.connection import every_url, open_connection

CONNECT_TIMEOUT_S = 2.0


class BrokerProbe:
    def __init__(self, broker_url: str, cache_s: float = 1.0):
        self._url = broker_url
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        """None when the broker answers, else why not. Blocking (at most a few seconds)."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self._cache_s:
                self._problem = self._connect()
                self._checked_at = time.monotonic()
            return self._problem

    def _connect(self) -> str | None:
        conn = open_connection(self._url)
        try:
            conn.ensure_connection(max_retries=every_url(conn), timeout=CONNECT_TIMEOUT_S)
        except (
            Exception
        ) as exc:  # kombu re-raises as OperationalError, outside connection_errors: any failure is "not ready"
            return mask_url(f"broker {conn.as_uri()} unreachable: {type(exc).__name__}: {exc}")
        finally:
            conn.release()
        return None
