"""The per-host consumer: broker messages in, each handed to the pipeline as a Delivery with its port.

One thread, the consumer's, owns the consuming connection: it receives, runs the ``inline`` commands (ping, result,
…), publishes every reply over that same connection and settles every message. Nothing else touches the connection
(connections are not thread-safe), so a command that ran on the pool hands its reply and its settling back to the
consumer thread (``Inbox``, transport/session.py). What happens between receiving and settling is the pipeline's
(``dispatch/pipeline.py``).

AMQP (``AmqpSession``, transport/amqp_session.py): consumed on py-amqp's own channel (kombu's per-message objects
cost more than the rest of the transport); replies go out on a second channel of the same connection, in confirm
mode when confirms are on, and a request is acked right when its reply's ``basic.ack`` is read, by delivery tag, in
the same loop; a nacked reply goes out again after a pause that doubles. The loop blocks in ``select`` on the
broker's socket and a wake-up pipe (written by the pool's threads with a reply, and by ``stop``), with a timeout
that keeps the heartbeats and the systemd watchdog going: no polling, idle or busy. An inline command costs no
thread hop at all. Each pass writes its frames once, then runs what the pipeline deferred to after that write
(``dispatch.deferred``: the journal's record of a read-only command answered in the pass).

Redis (``RedisSession``, transport/redis_session.py): the session's own BRPOP, and on the same connection kombu's
unacked bookkeeping (its keys, its values; kombu's restore) and the reply with its ack (one transaction), written in
front of the next BRPOP (a second connection, ``RedisBook``, takes what the pool answers while a BRPOP waits); the
loop waits on that socket and the wake-up pipe.

memory:// (``KombuSession``): kombu's Consumer; replies are published by the consumer thread on the consuming
channel; kombu's poller cannot wait on the wake-up pipe, so while pool commands run the loop drains every
millisecond.

A lost connection: replies waiting for their confirm are given up (their requests were not acked, the broker
delivers them again and the journal answers them from its record); the loop connects again (``ConsumeLoop``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Message

from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.observability.sdnotify import Notifier
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.amqp_session import AmqpSession
from kvmworker.transport.connection import ConnectionLost, drain_this_connection
from kvmworker.transport.consuming import ConsumeLoop, Consuming
from kvmworker.transport.names import host_queue
from kvmworker.transport.publisher import PublisherClosed
from kvmworker.transport.redis_session import RedisSession
from kvmworker.transport.session import Inbox, Port, reply_properties

log = logging.getLogger("kvmworker.worker")

# kombu's poller (memory://) cannot wait on the wake-up pipe: idle it waits for the broker this long (stop() is
# noticed within it), and every millisecond while pool commands run, so that their replies go out. memory://
# polls every 2 ms inside a drain anyway (MEMORY_POLL_S): a short pass costs nothing more and a stop is prompt.
IDLE_DRAIN_S = 0.02
BUSY_DRAIN_S = 0.001


class Worker:
    def __init__(
        self,
        connection: Connection,
        pipeline: Pipeline,
        host: str,
        *,
        prefetch: int = 32,
        on_connected: Callable[[bool], None] | None = None,
        notifier: Notifier | None = None,
        confirms: bool | None = None,
    ):
        """``connection`` consumes and publishes the replies; with AMQP, publisher confirms are on when its
        transport options say so (``open_connection(confirms=…)``) unless ``confirms`` says otherwise."""
        self._connection = connection
        self._pipeline = pipeline
        self._queue = host_queue(host)
        self._prefetch = prefetch
        if confirms is None:
            confirms = bool(connection.transport_options.get("confirm_publish"))
        self._confirms = confirms
        self._amqp = connection.transport.driver_type == "amqp"
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        # Set while basic.consume is confirmed on the live connection, cleared on any connection or channel
        # error and while reconnecting: readiness (/readyz, the metrics, the systemd watchdog) follows it.
        self.consuming = threading.Event()
        self.connected = self.consuming  # the older name
        # monotonic time of the consuming loop's last pass over the live connection
        self.last_drain = 0.0
        self._on_connected = on_connected or (lambda up: None)
        # systemd (Type=notify): READY once consuming, WATCHDOG while this thread goes round, STOPPING at stop()
        self._notifier = notifier or Notifier.from_environment()
        self._inbox = Inbox()
        self._session: AmqpSession | KombuSession | None = None
        self._in_flight = 0  # received and not yet settled (on this connection or an earlier one)
        self._thread_id: int | None = None

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with backoff whenever the broker goes away."""
        self._thread_id = threading.get_ident()
        try:
            loop = ConsumeLoop(
                self._connection, _Consumer(self), log=log, stopping=self._stopping, first_pause=0.5, max_pause=10.0
            )
            loop.run()
        finally:
            self._pipeline.shutdown()
            self._give_up_inbox()  # what the pool answered after the last connection went
            self._inbox.close()
            # Said before the waiters are released: once wait_stopped() returns, the process may close its
            # log handlers and exit, and a line logged after that is a "--- Logging error ---".
            log.info("worker stopped")
            self._stopped.set()

    def stop(self) -> None:
        """Finish what is running; give back what has not started (SIGTERM)."""
        self._stopping.set()
        self._pipeline.stop()
        self._notifier.stopping()
        self._inbox.wake()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _set_connected(self, up: bool) -> None:
        if up == self.consuming.is_set():
            return
        (self.consuming.set if up else self.consuming.clear)()
        self._on_connected(up)

    # -- one message (consumer thread) -------------------------------------------

    def _receive(self, delivery: Delivery, port: Port) -> None:
        self._in_flight += 1
        self._pipeline.receive(delivery, port)

    def _on_consumer_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _publish(self, port: Port, outgoing: Outgoing, done: Done) -> None:
        """On the consumer thread: over the live connection; none (between two): the reply is given up.
        A session calls ``done`` exactly once, and never raises for a write that failed (see ``AmqpSession``)."""
        session = self._session
        if session is None:
            done(ConnectionLost("not connected to the broker"))
            return
        session.publish(outgoing, done)

    def _settle(self, port: Port, ack: bool) -> None:
        """On the consumer thread. A message from an earlier connection is not settled: the broker took it back
        when that connection died and delivers it again (the journal answers it)."""
        self._in_flight -= 1
        session = self._session
        if port.session is not session or session is None or not session.alive:
            log.info(
                "[%s] not %s: its channel is gone, the broker delivers it again",
                port.label,
                "acked" if ack else "requeued",
            )
            return
        session.settle(port.tag, ack)

    def _take_inbox(self) -> None:
        for port, outgoing, done, ack in self._inbox.take():
            if outgoing is not None:
                self._publish(port, outgoing, done)  # type: ignore[arg-type]
            else:
                self._settle(port, ack)

    def _give_up_inbox(self) -> None:
        self._thread_id = threading.get_ident()  # whatever comes now is handled right here
        self._session = None
        closed = PublisherClosed("the worker stopped before the reply could be published")
        for port, outgoing, done, ack in self._inbox.take():
            if outgoing is not None:
                done(closed)  # type: ignore[misc]
            else:
                self._settle(port, ack)


class _Consumer(Consuming):
    """The worker's steps of ``ConsumeLoop``: every method runs on the consumer thread."""

    what = "consumer"

    def __init__(self, worker: Worker):
        self._worker = worker

    def start(self, conn: Connection, channel: Any) -> Any:
        worker = self._worker
        driver = conn.transport.driver_type
        kind = AmqpSession if worker._amqp else RedisSession if driver == "redis" else KombuSession
        try:
            return kind(worker, conn, channel)  # it becomes the worker's session before it consumes
        except BaseException:
            worker._session = None
            raise

    def up(self, conn: Connection, again: bool) -> None:
        worker = self._worker
        worker._set_connected(True)
        log.info("consuming %s on %s", worker._queue.name, conn.as_uri())
        worker._notifier.ready(f"consuming {worker._queue.name} on {conn.as_uri()}")

    def down(self) -> None:
        worker = self._worker
        session, worker._session = worker._session, None
        worker._set_connected(False)
        if session is not None:
            session.lost()

    def drain(self, conn: Connection, raw: Any) -> None:
        worker = self._worker
        session = worker._session
        assert session is not None  # started
        session.drain(conn, raw)
        if worker._inbox and isinstance(session, KombuSession):  # the others: taken within the pass, before it writes
            worker._take_inbox()
        worker.last_drain = time.monotonic()
        worker._notifier.alive()

    def busy(self) -> bool:
        worker = self._worker
        session = worker._session
        # Redis: a BRPOP cut short at cancel() is read to its end (it may bring a message)
        return worker._in_flight > 0 or (isinstance(session, RedisSession) and session.waiting)

    def attempting(self) -> None:
        self._worker._notifier.alive()  # reconnecting is progress too: a broker outage is no reason to restart

    def retrying(self, exc: BaseException, pause: float) -> None:
        self._worker._notifier.status(f"not consuming: {type(exc).__name__}; reconnecting in {pause:g} s")


# -- memory:// -------------------------------------------------------------------------------------------------


class KombuSession:
    """memory://: kombu's Consumer on one connection, and its channel for the replies, used by the consumer
    thread alone."""

    def __init__(self, worker: Worker, conn: Connection, channel: Any):
        self._worker = worker
        self.alive = True
        self._consumer = Consumer(channel, queues=[worker._queue], on_message=self._on_message, auto_declare=True)
        self._consumer.qos(prefetch_count=worker._prefetch)
        self._channel = channel
        worker._session = self  # before consuming: see AmqpSession
        self._consumer.consume()

    def drain(self, conn: Connection, raw: Any) -> None:
        worker = self._worker
        timeout = 0.0 if worker._inbox else BUSY_DRAIN_S if worker._in_flight else IDLE_DRAIN_S
        if worker._stopping.is_set():
            timeout = min(timeout, BUSY_DRAIN_S)
        drain_this_connection(conn, raw, timeout)

    def cancel(self) -> None:
        self._consumer.cancel()

    def lost(self) -> None:
        self.alive = False

    def _on_message(self, message: Message) -> None:
        props: dict[str, Any] = message.properties
        body = message.body
        delivery = Delivery(
            body=body if isinstance(body, bytes) else str(body).encode(),
            content_type=message.content_type,
            headers=message.headers or {},
            message_id=props.get("message_id"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            redelivered=bool(message.delivery_info.get("redelivered")),
        )
        self._worker._receive(delivery, Port(self._worker, self, message, props.get("message_id")))

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """The message kombu's Producer would build (the body is JSON bytes already), published as it would."""
        channel = self._channel
        message = channel.prepare_message(
            outgoing.body, None, JSON_CONTENT_TYPE, "utf-8", dict(outgoing.headers), reply_properties(outgoing)
        )
        try:
            channel.basic_publish(message, exchange="", routing_key=outgoing.routing_key)
        except Exception as exc:  # the message goes back when the channel goes
            done(exc)
            return
        done(None)

    def settle(self, message: Message, ack: bool) -> None:
        message.ack() if ack else message.requeue()
