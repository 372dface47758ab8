"""What a worker process gives back: SQLite's page caches bounded, the C heap trimmed once a burst is over.

Both are set where every worker starts (``Assembly.start``). After a burst of messages an idle worker held
~2 MB more than before it (issue 15): SQLite's page caches had filled to their default 2 MB a connection
(the journal, the event buffer, the networks store), and glibc keeps the pages that ``free`` returned in the
middle of its heap. SQLite's soft heap limit makes its connections share one bound, recycling their least
recently used pages (the files stay in the OS page cache); ``malloc_trim`` hands free pages back to the kernel.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("kvmworker.memory")

SQLITE_HEAP_LIMIT = 1 << 20
"""Bytes SQLite may hold for every connection of the process together before reusing its cached pages."""
TRIM_CHECK_S = 2.0
"""How often the trimmer looks at the process's CPU time: an idle wake-up of a few microseconds."""
BUSY_CPU_S = 0.02
"""CPU seconds within one check (1% of a core) that make it a burst; the first quiet check after one trims."""


def limit_sqlite_heap(limit: int = SQLITE_HEAP_LIMIT) -> int | None:
    """Set the soft heap limit of the SQLite that ``sqlite3`` uses; the limit now, or None where it cannot be
    set (an SQLite without the call). ``limit`` < 0 only reads it."""
    entry = _sqlite_call("sqlite3_soft_heap_limit64")
    if entry is None:
        return None
    entry.restype, entry.argtypes = ctypes.c_int64, [ctypes.c_int64]
    if limit >= 0:
        entry(limit)
    return int(entry(-1))


def _sqlite_call(name: str):
    """``name`` in the SQLite library the ``_sqlite3`` module is linked with (a handle of the module finds the
    libraries it depends on), so that the limit applies to the connections the worker opens."""
    try:
        import _sqlite3

        return getattr(ctypes.CDLL(_sqlite3.__file__), name)
    except (ImportError, OSError, AttributeError):
        return None


def heap_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.restype, trim.argtypes = ctypes.c_int, [ctypes.c_size_t]
    return lambda: trim(0)


class HeapTrimmer:
    """A thread that calls ``trim`` once at the end of each burst: the first check of the process's CPU time
    that finds it quiet after one that found it busy. An idle worker is never trimmed twice in a row."""

    def __init__(
        self,
        trim: Callable[[], object],
        interval: float = TRIM_CHECK_S,
        busy_cpu: float = BUSY_CPU_S,
        cpu: Callable[[], float] = time.process_time,
    ):
        self._trim, self._interval, self._busy_cpu, self._cpu = trim, interval, busy_cpu, cpu
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0

    def start(self) -> HeapTrimmer:
        self._thread = threading.Thread(target=self._run, name="kvmworker-trim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        last, busy = self._cpu(), False
        while not self._stopping.wait(self._interval):
            now = self._cpu()
            was_busy, busy, last = busy, now - last >= self._busy_cpu, now
            if was_busy and not busy:
                try:
                    self._trim()
                except Exception:
                    log.exception("trimming the heap failed")
                self.trims += 1


def start_trimming() -> HeapTrimmer | None:
    """The worker's trimmer, running; None where the C library cannot trim."""
    trim = heap_trim()
    return HeapTrimmer(trim).start() if trim is not None else None
