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
from queue import Empty, SimpleQueue
from typing import Protocol

log = logging.getLogger("kvmworker.executor")

Task = Callable[[], object]
_STOP = None
IDLE_S = 30.0
"""A pool thread idle this long ends (all but the last)."""


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
    """At most ``workers`` threads, started when a task finds none idle, not all at start; a thread idle for
    ``idle_s`` seconds ends (the last one stays, so a command after a quiet spell does not wait for a start).

    A thread starts whenever more tasks are handed over than threads wait for them (``_handed > _idle``, both
    counted under one lock), so a task never waits behind a running one while the pool has room: a ping is not
    delayed by a 60-second shutdown. A thread ends only when, under that lock, no handed task would be left
    without one.
    """

    def __init__(self, workers: int, name: str = "kvmworker-cmd", idle_s: float = IDLE_S):
        self._max = workers
        self._name = name
        self._idle_s = idle_s
        self._ready: SimpleQueue[tuple[str | None, Task] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Task]] = {}
        self._threads: set[threading.Thread] = set()
        self._started = 0  # names each new thread: {name}-0, {name}-1, …
        self._idle = 0  # threads waiting on the queue
        self._handed = 0  # tasks put on the queue and not yet taken
        self._stopping = False

    @property
    def threads(self) -> int:
        """Threads alive now (at most ``workers``)."""
        with self._lock:
            return len(self._threads)

    def submit(self, key: str | None, task: Task) -> None:
        if key is not None:
            with self._lock:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.append(task)
                    return
                self._waiting[key] = deque()
        self._hand(key, task)

    def _hand(self, key: str | None, task: Task) -> None:
        with self._lock:
            self._handed += 1
            wanted = self._handed > self._idle and len(self._threads) < self._max and not self._stopping
            thread = self._new_thread() if wanted else None
        self._ready.put((key, task))
        if thread is not None:
            self._start(thread)

    def _start(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (a limit): the threads already running take the task
            with self._lock:
                self._threads.discard(thread)
            log.exception("could not start another pool thread (%d running)", self.threads)

    def _new_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name=f"{self._name}-{self._started}", daemon=True)
        self._started += 1
        self._threads.add(thread)
        return thread

    def _loop(self) -> None:
        while (item := self._take()) is not _STOP:
            key, task = item
            try:
                task()
            except BaseException:  # a task reports its own errors; this is the last line of defence
                log.exception("a task escaped with an exception")
            finally:
                if key is not None:
                    self._next(key)

    def _take(self) -> tuple[str | None, Task] | None:
        """The next task, or ``_STOP`` once this thread ends (stopped, or idle and not needed)."""
        with self._lock:
            self._idle += 1
        while True:
            with self._lock:  # the last thread waits without a timeout: an idle worker has no wake-up here
                timeout = None if len(self._threads) == 1 else self._idle_s
            try:
                item = self._ready.get(timeout=timeout)
            except Empty:
                with self._lock:
                    # Stay when a task was handed over counting on this thread, or when it is the last one.
                    if self._handed >= self._idle or len(self._threads) == 1 or self._stopping:
                        continue
                    self._idle -= 1
                    self._threads.discard(threading.current_thread())
                    return _STOP
            with self._lock:
                self._idle -= 1
                if item is _STOP:
                    self._threads.discard(threading.current_thread())
                else:
                    self._handed -= 1
            return item

    def _next(self, key: str) -> None:
        with self._lock:
            queue = self._waiting[key]
            if not queue:
                del self._waiting[key]
                return
            task = queue.popleft()
        self._hand(key, task)

    def shutdown(self, wait: bool = True) -> None:
        """Threads finish the tasks already handed to them, then stop."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        for _ in threads:
            self._ready.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()
