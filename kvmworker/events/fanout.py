"""Events inside one process: a fan-out to subscribers, each with a bounded queue of its own.

On ``memory://`` the sender publishes here instead of to a broker (``LOCAL``: the memory transport is
process-wide too), so ``kvmworker serve``'s bridge serves the events at ``GET /events``. A bridge on a real
broker feeds a fan-out of its own from one broker consumer (``relay.py``). A subscriber that does not keep
up loses its oldest events, never holds up the others; it sees the loss as a gap in ``seq``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from kvmworker.events.model import Event

DEFAULT_QUEUE = 10_000


class Subscription:
    """Events matching ``host``/``source`` (None: any), oldest first. ``get`` blocks; ``aget`` awaits."""

    def __init__(self, fanout: Fanout, host: str | None, source: str | None, maxsize: int):
        self.host, self.source = host, source
        self._fanout = fanout
        self._items: deque[Event] = deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self._waker: Callable[[], None] | None = None
        self.closed = False
        self.overflowed = 0

    def matches(self, event: Event) -> bool:
        return (self.host is None or event.host == self.host) and (self.source is None or event.source == self.source)

    def put(self, event: Event) -> None:
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.overflowed += 1
            self._items.append(event)
            self._cond.notify_all()
            waker = self._waker
        if waker is not None:
            waker()

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds (or when closed)."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    async def aget(self, timeout: float) -> Event | None:
        """As ``get``, on an asyncio loop, without a thread per subscriber."""
        import asyncio  # here: a worker never awaits, and asyncio with its ssl parts is ~1 MB of its memory

        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            if self._items or self.closed:
                return self._items.popleft() if self._items else None
            self._waker = lambda: loop.call_soon_threadsafe(ready.set)
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._cond:
                self._waker = None
        with self._cond:
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more events; a waiting ``get``/``aget`` returns at once."""
        self._fanout.unsubscribe(self)
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            waker = self._waker
        if waker is not None:
            waker()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fanout:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._on_first: list[Callable[[], None]] = []

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            if subscription.matches(event):
                subscription.put(event)

    def subscribe(
        self, host: str | None = None, source: str | None = None, maxsize: int = DEFAULT_QUEUE
    ) -> Subscription:
        subscription = Subscription(self, host, source, maxsize)
        with self._lock:
            self._subscribers.append(subscription)
            hooks = list(self._on_first)
        for hook in hooks:
            hook()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def on_subscribe(self, hook: Callable[[], None]) -> None:
        """``hook()`` at every new subscription (the bridge's relay starts at the first one)."""
        with self._lock:
            self._on_first.append(hook)

    def close_all(self) -> None:
        """Every subscription ends (a stopping server's streams)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.close()

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)


LOCAL = Fanout()
"""The process's own fan-out: what a worker on ``memory://`` publishes to."""
