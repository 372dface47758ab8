"""The per-host consumer: kombu messages in, each handed to the pipeline as a Delivery with its port.

kombu connections are not thread-safe, so the consumer thread alone touches the consuming channel:
a message's port publishes its reply over the publisher's own connection (from whichever thread
answers), and settles it by handing it back to the consumer thread (the pipeline settles only once
the reply is published). What happens in between is the pipeline's (``dispatch/pipeline.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from kombu import Connection, Consumer, Message

from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.observability.sdnotify import Notifier
from kvmworker.transport.connection import drain_this_connection, every_url, log_connection_loss
from kvmworker.transport.names import host_queue
from kvmworker.transport.publisher import Publisher

log = logging.getLogger("kvmworker.worker")

# Idle, the consumer thread wakes every 50 ms; while commands are in flight every millisecond, so that
# a finished command's ack (and with it RabbitMQ's confirm to the publisher) is not held back.
IDLE_DRAIN_S = 0.05
BUSY_DRAIN_S = 0.001


class Worker:
    def __init__(
        self,
        connection: Connection,
        publisher: Publisher,
        pipeline: Pipeline,
        host: str,
        *,
        prefetch: int = 32,
        on_connected: Callable[[bool], None] | None = None,
        notifier: Notifier | None = None,
    ):
        self._connection = connection
        self._publisher = publisher
        self._pipeline = pipeline
        self._queue = host_queue(host)
        self._prefetch = prefetch
        self._settle_queue: SimpleQueue[tuple[Message, bool]] = SimpleQueue()
        self._in_flight = 0
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        # Set while basic.consume is confirmed on the live connection, cleared on any connection or channel
        # error and while reconnecting: readiness (/readyz, the metrics, the systemd watchdog) follows it.
        self.consuming = threading.Event()
        self.connected = self.consuming  # the older name
        self._channel: Any = None  # the consuming channel: messages from any other one are not settled
        # monotonic time of the consuming loop's last pass over the live connection: a watchdog (systemd's
        # WATCHDOG=1) pings only while ``consuming`` is set and this is recent, i.e. the loop is not stuck
        self.last_drain = 0.0
        self._had_consumed = False  # in the current attempt: then the next failure starts its backoff afresh
        self._on_connected = on_connected or (lambda up: None)
        # systemd (Type=notify): READY once consuming, WATCHDOG while this thread goes round, STOPPING at stop()
        self._notifier = notifier or Notifier.from_environment()

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with backoff whenever the broker goes away."""
        backoff = 0.5
        while not self._stopping.is_set():
            self._notifier.alive()  # reconnecting is progress too: a broker outage is no reason to restart
            try:
                self._consume_once()
            except Exception as exc:  # the consumer must outlive any failure; unexpected ones are logged in full
                if self._had_consumed:
                    backoff = 0.5  # it had consumed since the last failure: a new incident starts afresh
                log_connection_loss(log, self._connection, exc, "consumer", backoff)
                self._notifier.status(f"not consuming: {type(exc).__name__}; reconnecting in {backoff:g} s")
                self._connection.maybe_switch_next()  # several URLs: start again at the next node, not the lost one
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._pipeline.shutdown()
        self._publisher.close()  # every reply settled: its thread and connection go
        # Said before the waiters are released: once wait_stopped() returns, the process may close its
        # log handlers and exit, and a line logged after that is a "--- Logging error ---".
        log.info("worker stopped")
        self._stopped.set()

    def stop(self) -> None:
        """Finish what is running; give back what has not started (SIGTERM)."""
        self._stopping.set()
        self._pipeline.stop()
        self._notifier.stopping()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _consume_once(self) -> None:
        self._had_consumed = False
        with self._connection.clone() as conn:
            conn.ensure_connection(max_retries=every_url(conn))
            raw = conn.connection  # drained directly from now on: see drain_this_connection
            channel = conn.channel()
            consumer = Consumer(channel, queues=[self._queue], on_message=self._on_message, auto_declare=True)
            consumer.qos(prefetch_count=self._prefetch)
            consumer.consume()  # returns once the broker has confirmed basic.consume
            self._channel = channel
            self._set_connected(True)
            log.info("consuming %s on %s", self._queue.name, conn.as_uri())
            self._notifier.ready(f"consuming {self._queue.name} on {conn.as_uri()}")
            try:
                while not self._stopping.is_set():
                    self._drain(conn, raw)
                consumer.cancel()
                self._finish_in_flight(conn, raw)
            finally:
                self._channel, self._had_consumed = None, True
                self._set_connected(False)

    def _drain(self, conn: Connection, raw: Any) -> None:
        drain_this_connection(conn, raw, BUSY_DRAIN_S if self._in_flight else IDLE_DRAIN_S)
        self._settle()
        self.last_drain = time.monotonic()
        self._notifier.alive()

    def _finish_in_flight(self, conn: Connection, raw: Any) -> None:
        while self._in_flight > 0:
            self._drain(conn, raw)

    def _set_connected(self, up: bool) -> None:
        if up == self.consuming.is_set():
            return
        (self.consuming.set if up else self.consuming.clear)()
        self._on_connected(up)

    # -- one message -----------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        self._in_flight += 1
        self._pipeline.receive(delivery_of(message), ReplyPort(message, self._publisher, self._settle_queue))

    def _settle(self) -> None:
        """Ack or requeue finished messages on the consuming channel; a failure there is a lost connection
        (it raises, and the consumer is set up again). A message from an earlier channel is not settled:
        the broker took it back when that channel died and delivers it again (the journal answers it)."""
        while True:
            try:
                message, ack = self._settle_queue.get_nowait()
            except Empty:
                return
            self._in_flight -= 1
            if message.channel is not self._channel:
                log.info(
                    "[%s] not %s: its channel is gone, the broker delivers it again",
                    message.properties.get("message_id"),
                    "acked" if ack else "requeued",
                )
                continue
            message.ack() if ack else message.requeue()


class ReplyPort:
    """One message's way back: its reply over the publisher (asynchronously), settled by the consumer thread."""

    __slots__ = ("_message", "_publisher", "_settle_queue")

    def __init__(self, message: Message, publisher: Publisher, settle_queue: SimpleQueue[tuple[Message, bool]]):
        self._message = message
        self._publisher = publisher
        self._settle_queue = settle_queue

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """Returns at once: ``done`` comes from the publisher's thread once the broker has the reply (its confirm,
        when confirms are on), and only then is the message settled. No thread waits for a confirm."""
        try:
            self._publisher.publish_async(
                outgoing.body,
                routing_key=outgoing.routing_key,
                correlation_id=outgoing.correlation_id,
                message_id=outgoing.message_id,
                headers=dict(outgoing.headers),
                done=done,
            )
        except Exception as exc:  # a closed publisher: the message goes back to the queue
            done(exc)

    def settle(self, ack: bool) -> None:
        self._settle_queue.put((self._message, ack))


def delivery_of(message: Message) -> Delivery:
    props: dict[str, Any] = message.properties
    body = message.body
    return Delivery(
        body=body if isinstance(body, bytes) else str(body).encode(),
        content_type=message.content_type,
        headers=message.headers or {},
        message_id=props.get("message_id"),
        correlation_id=props.get("correlation_id"),
        reply_to=props.get("reply_to"),
        redelivered=bool(message.delivery_info.get("redelivered")),
    )
