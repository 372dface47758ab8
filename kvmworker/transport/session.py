"""What every session of the worker's consumer thread shares: the inbox that the pool's threads hand replies and
settlings to (and the pipe that wakes the consumer thread), a message's way back (``Port``), and the reply's
properties as kombu publishes them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.transport.connection import HEARTBEAT_S

if TYPE_CHECKING:
    from kvmworker.transport.worker import Worker

# Idle, a session blocks this long at most: the heartbeats (30 s, checked at twice their rate) and the
# watchdog (fed at half its interval, shorter when systemd asks) need it; a message or stop() wakes it at once.
IDLE_WAIT_S = HEARTBEAT_S / 6
RECV_CHUNK = 65536  # the broker's socket is read this much at a time, its frames cut out of what came


class Inbox:
    """Replies and settlings handed to the consumer thread by the pool's threads, and the pipe that wakes it."""

    def __init__(self) -> None:
        self._items: deque[tuple[Port, Outgoing | None, Done | None, bool]] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()  # the pipe is not written once closed (its fd may be reused)
        self._closed = False
        self.asleep = False  # the consumer thread is (about to be) in select(): a new item must wake it

    @property
    def fd(self) -> int:
        return self._read_fd

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, item: tuple[Port, Outgoing | None, Done | None, bool]) -> None:
        self._items.append(item)
        if self.asleep:  # else the consumer thread looks at the inbox before it sleeps again
            self.wake()

    def take(self) -> list[tuple[Port, Outgoing | None, Done | None, bool]]:
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    def wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread just the same
            if not self._closed:
                os.write(self._write_fd, b"\0")

    def drain_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)


class Port:
    """One message's way back: on the consumer thread directly, from any other thread through the inbox."""

    __slots__ = ("_worker", "label", "session", "tag")

    def __init__(self, worker: Worker, session: Any, tag: Any, label: Any):
        self._worker = worker
        self.session = session
        self.tag = tag  # the delivery tag (AMQP, Redis), kombu's Message (memory://)
        self.label = label

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        worker = self._worker
        if worker._on_consumer_thread():
            worker._publish(self, outgoing, done)
        else:
            worker._inbox.put((self, outgoing, done, False))

    def settle(self, ack: bool) -> None:
        worker = self._worker
        if worker._on_consumer_thread():
            worker._settle(self, ack)
        else:
            worker._inbox.put((self, None, None, ack))


def reply_properties(outgoing: Outgoing) -> dict[str, Any]:
    return {"delivery_mode": 1, "correlation_id": outgoing.correlation_id, "message_id": outgoing.message_id}
