"""A worker pool where tasks with the same resource key run one after another.

A task waiting for its key holds no thread: it is queued behind the running one, so a
60-second VM shutdown delays only the next command on that VM, never a ``ping``.
Tasks report their own outcome (the pipeline answers through the port), so there are no futures:
handing a task to a thread is one put on a C queue, the cheapest handoff Python has.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Protocol

log = logging.getLogger("kvmworker.executor")

Task = Callable[[], object]
_STOP = None


class Executor(Protocol):
    """Runs tasks with the same key one after another."""

    def submit(self, key: str | None, task: Task) -> None: ...

    def shutdown(self, wait: bool = True) -> None: ...


class CallerRuns:
    """Each task at once on the calling thread: a pipeline without a pool (tests, embedded callers)."""

    def submit(self, key: str | None, task: Task) -> None:
        task()

    def shutdown(self, wait: bool = True) -> None:
        pass


class KeyedExecutor:
    def __init__(self, workers: int, name: str = "kvmworker-cmd"):
        self._ready: SimpleQueue[tuple[str | None, Task] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Task]] = {}
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str | None, task: Task) -> None:
        if key is not None:
            with self._lock:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.append(task)
                    return
                self._waiting[key] = deque()
        self._ready.put((key, task))

    def _loop(self) -> None:
        while (item := self._ready.get()) is not _STOP:
            key, task = item
            try:
                task()
            except BaseException:  # a task reports its own errors; this is the last line of defence
                log.exception("a task escaped with an exception")
            finally:
                if key is not None:
                    self._next(key)

    def _next(self, key: str) -> None:
        with self._lock:
            queue = self._waiting[key]
            if not queue:
                del self._waiting[key]
                return
            task = queue.popleft()
        self._ready.put((key, task))

    def shutdown(self, wait: bool = True) -> None:
        """Threads finish the tasks already handed to them, then stop."""
        for _ in self._threads:
            self._ready.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()
