"""What a worker gives back: SQLite's caches share one bound, and the heap is trimmed once at the end of a burst."""

from __future__ import annotations

import sqlite3
import threading

from kvmworker.app import assemble
from kvmworker.memory import SQLITE_HEAP_LIMIT, HeapTrimmer, heap_trim, limit_sqlite_heap
from kvmworker.settings import Settings
from tests.support.processes import wait_for


class Clock:
    """The process's CPU time as the trimmer reads it, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def test_the_trimmer_trims_once_when_a_burst_ends_and_never_while_idle_or_busy():
    clock, trimmed = Clock(), threading.Event()
    calls: list[float] = []

    def trim() -> None:
        calls.append(clock.now)
        trimmed.set()

    trimmer = HeapTrimmer(trim, interval=0.01, busy_cpu=0.02, cpu=clock).start()
    try:
        assert wait_for(lambda: clock.reads > 5, 10), "the trimmer looks at the clock"
        assert calls == [], "an idle process is not trimmed"
        clock.now += 1.0  # a burst: a whole CPU second between two looks
        assert trimmed.wait(10), "the first quiet look after it trims"
        reads = clock.reads
        assert wait_for(lambda: clock.reads > reads + 5, 10)
        assert calls == [1.0], "once per burst, not at every quiet look"
        clock.now += 1.0
        assert wait_for(lambda: len(calls) == 2, 10), "the next burst is trimmed after it too"
    finally:
        trimmer.stop()


def test_glibc_trims_the_heap_of_this_process():
    trim = heap_trim()
    assert trim is not None, "the worker runs on glibc (Debian): malloc_trim is there"
    assert trim() in (0, 1), "malloc_trim answers whether it gave memory back"


def test_a_started_worker_bounds_sqlite_and_runs_its_trimmer_until_closed(tmp_path):
    settings = Settings(host="kvt-memory", broker="memory://", state_dir=tmp_path / "state")
    assembly = assemble(settings)
    try:
        limit_sqlite_heap(0)  # no bound, as a process that never started a worker
        assembly.start()
        assert limit_sqlite_heap(-1) == SQLITE_HEAP_LIMIT
        assert assembly.trimmer is not None
        assert "kvmworker-trim" in {t.name for t in threading.enumerate()}
    finally:
        assembly.close()
    assert not any(t.name == "kvmworker-trim" and t.is_alive() for t in threading.enumerate())


def test_sqlite_connections_under_the_bound_still_read_back_everything_they_wrote(tmp_path):
    limit_sqlite_heap(64 * 1024)  # far below what the rows below take, so that pages are recycled
    try:
        db = sqlite3.connect(tmp_path / "kvt.sqlite")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"value {i}" * 20) for i in range(20_000)))
        db.commit()
        assert db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == (
            20_000,
            sum(len(f"value {i}" * 20) for i in range(20_000)),
        )
        db.close()
    finally:
        limit_sqlite_heap(SQLITE_HEAP_LIMIT)
