"""A worker pool where tasks with the same resource key run one after another.

A task waiting for its key holds no thread: it is queued behind the running one, so a
60-second VM shutdown delays only the next command on that VM, never a ``ping``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class KeyedExecutor:
    def __init__(self, workers: int, name: str = "kvmworker-cmd"):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[tuple[Callable[[], Any], Future]]] = {}

    def submit(self, key: str | None, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        if key is not None:
            with self._lock:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.append((fn, future))
                    return future
                self._waiting[key] = deque()
        self._start(key, fn, future)
        return future

    def _start(self, key: str | None, fn: Callable[[], Any], future: Future) -> None:
        self._pool.submit(self._run, key, fn, future)

    def _run(self, key: str | None, fn: Callable[[], Any], future: Future) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the future carries it to whoever waits
                    future.set_exception(exc)
        finally:
            if key is not None:
                self._next(key)

    def _next(self, key: str) -> None:
        with self._lock:
            queue = self._waiting[key]
            if not queue:
                del self._waiting[key]
                return
            fn, future = queue.popleft()
        self._start(key, fn, future)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
