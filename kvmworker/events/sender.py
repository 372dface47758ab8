"""The sender: one thread that takes events from the on-disk buffer, in ``seq`` order, and publishes them.

To a broker: the durable topic exchange ``kvmworker.events``, routing key ``<host>.<source>.<kind>``,
persistent, each publish confirmed by RabbitMQ before the event leaves the buffer, signed like replies when
the worker has keys. While the broker is away the events wait on disk and the sender tries again with
backoff; it never skips one, so they go out in order. An event confirmed but not yet taken out of the
buffer when the worker dies is published again at the next start, with the same ``seq``: consumers drop a
``seq`` they have seen (``GapDetector``). On ``memory://`` the target is the process's ``Fanout``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from kombu import Connection, Exchange, Producer

from kvmworker.events.buffer import EventBuffer
from kvmworker.events.fanout import Fanout
from kvmworker.events.model import CONTENT_TYPE, EXCHANGE, Event
from kvmworker.protocol.urls import mask_secrets
from kvmworker.transport.connection import connection_errors, every_url, open_connection

log = logging.getLogger("kvmworker.events")

BATCH = 200
PUBLISH_TIMEOUT_S = 10.0
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0
EVENT_CORRELATION = "kvmworker.events"
"""The ``correlation_id`` of every event: what a reply signature can never bind (a reply's is its caller's own)."""


def events_exchange() -> Exchange:
    return Exchange(EXCHANGE, type="topic", durable=True)


def event_message_id(host: str, seq: int) -> str:
    return f"{host}:{seq}"


class Target(Protocol):
    def publish(self, seq: int, body: bytes) -> None: ...

    def close(self) -> None: ...


class LocalTarget:
    """``memory://``: straight to the process's fan-out."""

    def __init__(self, fanout: Fanout):
        self._fanout = fanout

    def publish(self, seq: int, body: bytes) -> None:
        self._fanout.publish(Event.from_body(body))

    def close(self) -> None:
        pass


class BrokerTarget:
    """A connection of its own (never the replies' publisher), confirms on, the exchange declared at connect."""

    def __init__(self, url: str, host: str, signer: Any = None):
        # No heartbeats: this connection is only written to, and between events nothing would read the broker's
        # beats; a dead connection shows at the next publish instead (a write error, or no confirm in time).
        self._conn: Connection = open_connection(url, confirms=True).clone(heartbeat=0)
        self._host = host
        self._signer = signer  # WorkerKeys: sign_reply(body, correlation_id, msg_id)
        self._producer: Producer | None = None

    def publish(self, seq: int, body: bytes) -> None:
        producer = self._connected()
        event = Event.from_body(body)
        message_id = event_message_id(self._host, seq)
        headers: dict[str, Any] = {}
        if self._signer is not None:
            headers.update(self._signer.sign_reply(body, EVENT_CORRELATION, message_id))
        try:
            producer.publish(
                body,
                exchange=events_exchange(),
                routing_key=event.routing_key,
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2,
                headers=headers,
                message_id=message_id,
                correlation_id=EVENT_CORRELATION,
                timestamp=int(event.time),
                timeout=PUBLISH_TIMEOUT_S,
                confirm_timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception:
            self._drop()
            raise

    def _connected(self) -> Producer:
        if self._producer is None:
            conn = self._conn.clone()
            try:
                conn.ensure_connection(max_retries=every_url(conn), interval_start=0, interval_step=0.2)
                channel = conn.channel()
                events_exchange()(channel).declare()
                self._producer = Producer(channel, auto_declare=False)
            except Exception:
                conn.release()
                self._conn.maybe_switch_next()
                raise
        return self._producer

    def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.channel.connection.client.release()
            except Exception:
                log.debug("closing the events connection failed", exc_info=True)

    def errors(self) -> tuple[type[BaseException], ...]:
        return connection_errors(self._conn)

    def close(self) -> None:
        self._drop()
        self._conn.release()


class Sender:
    """``wake()`` after each emit; ``flush(timeout)`` waits until the buffer is empty (or gives up)."""

    def __init__(self, buffer: EventBuffer, target: Target, on_published: Callable[[int], None] | None = None):
        self._buffer = buffer
        self._target = target
        self._on_published = on_published or (lambda seq: None)
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmworker-events", daemon=True)
        self.connected = threading.Event()

    def start(self) -> Sender:
        self._wake.set()  # what an earlier run left in the buffer goes out now
        self._thread.start()
        return self

    def wake(self, *_: object) -> None:
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """True once everything buffered so far was published; False after ``timeout`` (the rest stays on disk)."""
        self.wake()
        with self._idle:
            return self._idle.wait_for(lambda: self._buffer.pending_count() == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._target.close()

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        failing = False
        while not self._stopping.is_set():
            self._wake.wait()  # idle, it sleeps until an event is stored (the emitter's listener) or stop()
            self._wake.clear()
            try:
                while self._send_batch():
                    pass
            except Exception as exc:
                self.connected.clear()
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "events not published (%s); again in %.1f s", mask_secrets(str(exc)), backoff)
                failing = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._wake.set()
                continue
            if failing:
                log.info("events published again (%d buffered)", self._buffer.pending_count())
            failing, backoff = False, BACKOFF_START_S
            with self._idle:
                self._idle.notify_all()

    def _send_batch(self) -> bool:
        """Publish the oldest buffered events; True if there may be more."""
        batch = self._buffer.pending(BATCH)
        if not batch:
            return False
        self._buffer.make_durable()  # a seq someone may see is on disk before it leaves
        for seq, body in batch:
            if self._stopping.is_set():
                return False
            self._target.publish(seq, body)
            self.connected.set()
            self._buffer.published(seq)
            self._on_published(seq)
        with self._idle:
            self._idle.notify_all()
        return len(batch) == BATCH
