"""The command pool starts its threads when tasks need them, and lets the extra ones go after a quiet spell."""

from __future__ import annotations

import threading
import time

from kvmworker.dispatch.executor import KeyedExecutor


def pool_threads(prefix: str) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


class Gate:
    """Tasks that hold their thread until the gate opens, and say on which thread they ran."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.ran: list[str] = []
        self.started = threading.Semaphore(0)

    def task(self) -> None:
        self.ran.append(threading.current_thread().name)
        self.started.release()
        assert self.open.wait(10)

    def wait_started(self, count: int) -> bool:
        return all(self.started.acquire(timeout=10) for _ in range(count))


def test_a_new_pool_has_no_thread_until_a_task_comes_and_then_reuses_the_idle_one():
    pool = KeyedExecutor(16, name="kvt-lazy-a")
    try:
        assert pool_threads("kvt-lazy-a") == [] and pool.threads == 0
        done = threading.Event()
        for _ in range(20):
            done.clear()
            pool.submit(None, done.set)
            assert done.wait(10)
            time.sleep(0.01)  # the thread is back waiting before the next task is handed over
        assert pool_threads("kvt-lazy-a") == ["kvt-lazy-a-0"], "one task at a time needs one thread"
    finally:
        pool.shutdown()
    assert pool_threads("kvt-lazy-a") == []


def test_tasks_that_find_every_thread_busy_each_start_one_up_to_the_limit_and_the_rest_wait_their_turn():
    pool = KeyedExecutor(3, name="kvt-lazy-b")
    gate = Gate()
    try:
        for _ in range(5):
            pool.submit(None, gate.task)
        assert gate.wait_started(3), "three tasks run side by side"
        assert pool_threads("kvt-lazy-b") == ["kvt-lazy-b-0", "kvt-lazy-b-1", "kvt-lazy-b-2"]
        assert not gate.started.acquire(timeout=0.3), "the fourth task waits: the pool is at its limit"
        gate.open.set()
        assert gate.wait_started(2)
        assert sorted(set(gate.ran)) == ["kvt-lazy-b-0", "kvt-lazy-b-1", "kvt-lazy-b-2"]
    finally:
        gate.open.set()
        pool.shutdown()
    assert pool_threads("kvt-lazy-b") == []


def test_a_task_behind_a_long_one_on_another_key_gets_a_thread_of_its_own_at_once():
    pool = KeyedExecutor(4, name="kvt-lazy-c")
    gate = Gate()
    other, behind = threading.Event(), threading.Event()
    try:
        pool.submit("vm:slow", gate.task)
        assert gate.wait_started(1)
        pool.submit("vm:other", other.set)
        assert other.wait(10), "the task on another key waited for the long one"
        pool.submit("vm:slow", behind.set)  # the same key: queued behind the running task
        assert not behind.wait(0.2), "a task ran before the one ahead of it on its key had finished"
        gate.open.set()
        assert behind.wait(10), "the queued task runs once its key is free"
    finally:
        gate.open.set()
        pool.shutdown()


def test_threads_idle_past_the_limit_end_but_the_last_one_stays_and_takes_the_next_task():
    pool = KeyedExecutor(4, name="kvt-lazy-d", idle_s=0.2)
    gate = Gate()
    try:
        for _ in range(4):
            pool.submit(None, gate.task)
        assert gate.wait_started(4)
        gate.open.set()
        deadline = time.monotonic() + 10
        while pool.threads > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.threads == 1 and len(pool_threads("kvt-lazy-d")) == 1
        time.sleep(0.5)
        assert pool.threads == 1, "the last thread stays however long it is idle"
        done = threading.Event()
        pool.submit(None, done.set)
        assert done.wait(10)
    finally:
        gate.open.set()
        pool.shutdown()
    assert pool_threads("kvt-lazy-d") == []


def test_a_pool_that_was_shut_down_starts_no_thread_for_a_late_task():
    pool = KeyedExecutor(4, name="kvt-lazy-e")
    done = threading.Event()
    pool.submit(None, done.set)
    assert done.wait(10)
    pool.shutdown()
    late = threading.Event()
    pool.submit(None, late.set)
    assert not late.wait(0.3) and pool_threads("kvt-lazy-e") == [] and pool.threads == 0
