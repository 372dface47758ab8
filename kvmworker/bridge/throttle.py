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


class RateLimit:
    """A token bucket over the whole bridge: at most ``burst`` at once, refilled at ``per_second``.

    Per-user and per-address throttles stop guessing one account or from one place; this one bounds
    guessing across every account and address together (many users, many source addresses).
    """

    def __init__(self, per_second: float = 1.0, burst: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._level = burst
        self._at = clock()
        self._lock = threading.Lock()

    def retry_after(self) -> float:
        """Seconds until one more is allowed (0: now)."""
        with self._lock:
            self._refill()
            return 0.0 if self._level >= 1 else (1 - self._level) / self.per_second

    def take(self) -> None:
        with self._lock:
            self._refill()
            self._level -= 1

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.per_second)
        self._at = now
