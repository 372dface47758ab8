"""Throttling of failed logins: a few free attempts, then an exponentially growing lock-out."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    locked_until: float
    last_failure: float


class Throttle:
    """Per key (a username, a client address). Memory is bounded: the oldest keys are forgotten first."""

    def __init__(
        self,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        max_keys: int = 10_000,
        forget_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._max_keys = max_keys
        self._forget_after = forget_after
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            waits = [record.locked_until - now for key in keys if (record := self._records.get(key))]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                record = self._records.pop(key, None)
                if record is None or now - record.last_failure > self._forget_after:
                    record = _Record(0, 0.0, now)  # old failures are forgiven: a typo last week costs nothing
                record.failures += 1
                record.last_failure = now
                record.locked_until = now + self._delay(record.failures)
                self._records[key] = record
            while len(self._records) > self._max_keys:
                self._records.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def _delay(self, failures: int) -> float:
        over = failures - self.free_failures
        if over < 0:
            return 0.0
        return min(self.base_delay * 2**over, self.max_delay)
