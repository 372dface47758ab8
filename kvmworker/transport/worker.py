"""The per-host consumer: broker messages in, each handed to the pipeline as a Delivery with its port.

One thread, the consumer's, owns the consuming connection: it receives, runs the ``inline`` commands (ping,
result, …), publishes every reply over that same connection and settles every message. Nothing else touches
the connection (connections are not thread-safe), so a command that ran on the pool hands its reply and its
settling back to the consumer thread (``_Inbox``). What happens between receiving and settling is the
pipeline's (``dispatch/pipeline.py``).

AMQP (``_AmqpSession``): consumed on py-amqp's own channel (kombu's per-message objects cost more than the rest
of the transport); replies go out on a second channel of the same connection, in confirm mode when confirms are
on, and a request is acked right when its reply's ``basic.ack`` is read, by delivery tag, in the same loop; a
nacked reply goes out again after a pause that doubles. The loop blocks in ``select`` on the broker's socket
and a wake-up pipe (written by the pool's threads with a reply, and by ``stop``), with a timeout that keeps the
heartbeats and the systemd watchdog going: no polling, idle or busy. An inline command costs no thread hop at
all. Each pass writes its frames once, then runs what the pipeline deferred to after that write
(``dispatch.deferred``: the journal's record of a read-only command answered in the pass).

Redis (``_RedisSession``): the session's own BRPOP, and on the same connection kombu's unacked bookkeeping (its
keys, its values; kombu's restore) and the reply with its ack (one transaction), written in front of the next
BRPOP (a second connection, ``_RedisBook``, takes what the pool answers while a BRPOP waits); the loop waits on
that socket and the wake-up pipe.

memory:// (``_KombuSession``): kombu's Consumer; replies are published by the consumer thread on the consuming
channel; kombu's poller cannot wait on the wake-up pipe, so while pool commands run the loop drains every
millisecond.

A lost connection: replies waiting for their confirm are given up (their requests were not acked, the broker
delivers them again and the journal answers them from its record); the loop connects again (``ConsumeLoop``).
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import json
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

from amqp import Message as AmqpMessage
from amqp import spec
from amqp.exceptions import MessageNacked, UnexpectedFrame
from amqp.serialization import dumps
from amqp.transport import TCPTransport
from kombu import Connection, Consumer, Message

from kvmworker.dispatch.deferred import begin_pass, end_pass
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.observability.sdnotify import Notifier
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.amqp_frames import (
    FRAME_END,
    FRAME_HEADER,
    publish_frames,
    publish_method,
    settle_frame,
    shortstr,
    table,
)
from kvmworker.transport.amqp_properties import decode_properties
from kvmworker.transport.connection import HEARTBEAT_S, ConnectionLost, drain_this_connection
from kvmworker.transport.consuming import ConsumeLoop, Consuming
from kvmworker.transport.names import host_queue
from kvmworker.transport.publisher import PublisherClosed

log = logging.getLogger("kvmworker.worker")

# Idle, the AMQP loop blocks this long at most: the heartbeats (30 s, checked at twice their rate) and the
# watchdog (fed at half its interval, shorter when systemd asks) need it; a message or stop() wakes it at once.
IDLE_WAIT_S = HEARTBEAT_S / 6
HEARTBEAT_TICK_S = 1.0  # busy, the heartbeats are looked at once a second at most
# kombu's poller (Redis, memory://) cannot wait on the wake-up pipe: idle it waits for the broker this long
# (stop() is noticed within it), and every millisecond while pool commands run, so that their replies go out.
IDLE_DRAIN_S = 0.2
BUSY_DRAIN_S = 0.001
# A nacked reply (its queue electing a leader): again after 0.1, 0.2, 0.4 … s (at most 2 s), 12 times (~17 s).
NACK_RETRIES = 12
NACK_BACKOFF_MAX_S = 2.0
RECV_CHUNK = 65536  # the broker's socket is read this much at a time, its frames cut out of what came
# The methods the loop reads itself, by their class and method ids (a method frame's first four octets), and
# what follows: basic.deliver's delivery tag and redelivered bit (after its consumer tag), basic.ack's tag and
# multiple bit; a content header's body size (after its class id and weight).
_DELIVER = struct.pack(">HH", *spec.Basic.Deliver)
_ACK = struct.pack(">HH", *spec.Basic.Ack)
_TAG_AND_BIT = struct.Struct(">QB")
_BODY_SIZE = struct.Struct(">Q")
# Written (transport/amqp_frames.py): the reply's properties are content_type, content_encoding,
# application_headers, delivery_mode, correlation_id, message_id (their bits in the property flags, in the order
# the format lists them); the flags and the first two are always these.
_REPLY_FLAGS_TYPE_AND_ENCODING = struct.pack(">H", 1 << 15 | 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10 | 1 << 7) + dumps(
    "ss", (JSON_CONTENT_TYPE, "utf-8")
)
_TRANSIENT = b"\x01"  # delivery_mode
# Redis: the worker reads the answers to its bookkeeping and replies once this many are owed (about 20 messages)
UNREAD_MAX = 200
# Redis: kombu's restore of what was left unacked past the visibility timeout runs this often (a quarter of the
# timeout, within these bounds), busy or idle; kombu's own consumer ran it on every tenth empty poll
RESTORE_MIN_S, RESTORE_MAX_S = 0.5, 10.0


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
        self._inbox = _Inbox()
        self._session: _AmqpSession | _KombuSession | None = None
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

    def _receive(self, delivery: Delivery, port: _Port) -> None:
        self._in_flight += 1
        self._pipeline.receive(delivery, port)

    def _on_consumer_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _publish(self, port: _Port, outgoing: Outgoing, done: Done) -> None:
        """On the consumer thread: over the live connection; none (between two): the reply is given up.
        A session calls ``done`` exactly once, and never raises for a write that failed (see ``_AmqpSession``)."""
        session = self._session
        if session is None:
            done(ConnectionLost("not connected to the broker"))
            return
        session.publish(outgoing, done)

    def _settle(self, port: _Port, ack: bool) -> None:
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


class _Inbox:
    """Replies and settlings handed to the consumer thread by the pool's threads, and the pipe that wakes it."""

    def __init__(self) -> None:
        self._items: deque[tuple[_Port, Outgoing | None, Done | None, bool]] = deque()
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

    def put(self, item: tuple[_Port, Outgoing | None, Done | None, bool]) -> None:
        self._items.append(item)
        if self.asleep:  # else the consumer thread looks at the inbox before it sleeps again
            self.wake()

    def take(self) -> list[tuple[_Port, Outgoing | None, Done | None, bool]]:
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


class _Port:
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


class _Consumer(Consuming):
    """The worker's steps of ``ConsumeLoop``: every method runs on the consumer thread."""

    what = "consumer"

    def __init__(self, worker: Worker):
        self._worker = worker

    def start(self, conn: Connection, channel: Any) -> Any:
        worker = self._worker
        driver = conn.transport.driver_type
        kind = _AmqpSession if worker._amqp else _RedisSession if driver == "redis" else _KombuSession
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
        if worker._inbox and isinstance(session, _KombuSession):  # the others: taken within the pass, before it writes
            worker._take_inbox()
        worker.last_drain = time.monotonic()
        worker._notifier.alive()

    def busy(self) -> bool:
        worker = self._worker
        session = worker._session
        # Redis: a BRPOP cut short at cancel() is read to its end (it may bring a message)
        return worker._in_flight > 0 or (isinstance(session, _RedisSession) and session.waiting)

    def attempting(self) -> None:
        self._worker._notifier.alive()  # reconnecting is progress too: a broker outage is no reason to restart

    def retrying(self, exc: BaseException, pause: float) -> None:
        self._worker._notifier.status(f"not consuming: {type(exc).__name__}; reconnecting in {pause:g} s")


# -- AMQP ------------------------------------------------------------------------------------------------------


class _AmqpSession:
    """One connection's consuming channel and reply channel, used by the consumer thread alone."""

    def __init__(self, worker: Worker, conn: Connection, channel: Any):
        self._worker = worker
        self._raw = raw = conn.connection
        self._channel = channel
        self.alive = True
        worker._queue.bind(channel).declare()
        channel.basic_qos(0, worker._prefetch, False)
        # Replies on a channel of their own: a reply the broker refuses closes that channel, not the consuming one.
        self._replies = conn.channel()
        self._confirms = worker._confirms
        self._unconfirmed: dict[int, tuple[Outgoing, Done, int]] = {}  # by delivery tag: reply, done, nacks
        self._later: list[tuple[float, int, Outgoing, Done, int]] = []  # nacked, waiting for their pause
        self._order = itertools.count()
        self._tag = 0
        self._broken: Exception | None = None  # a write failed: the connection is lost, drain() raises it
        self._orphans: list[Done] = []  # replies not written since: their done comes from lost()
        if self._confirms:
            self._replies.confirm_select()
            self._replies.events["basic_ack"].add(self._on_ack)
            self._replies.events["basic_nack"].add(self._on_nack)
        self._sock = raw.sock  # kept: once py-amqp has collected a closed connection, ``raw.sock`` reconnects
        self._plain_tcp = type(raw.transport) is TCPTransport
        # A pass's frames (replies, acks) are collected and written together at its end (``flush``): one write
        # per pass, not one per frame. Written to the socket = what ``done`` means without confirms.
        self._out: list[bytes] = []
        self._written: list[Done] = []  # no confirms: replies in ``_out``, done once the write returned
        self._rbuf = bytearray()  # what was read of the socket past the last whole frame
        self._assembling: _Arriving | None = None  # a delivery whose header or body frames are still to come
        self._consuming_id, self._replies_id = channel.channel_id, self._replies.channel_id
        self._poll = select.epoll()  # not ``selectors``: its wrapper costs as much again per pass (a KVM host: Linux)
        self._poll.register(self._sock.fileno(), select.EPOLLIN)
        self._poll.register(worker._inbox.fd, select.EPOLLIN)
        self._wait_s = min(IDLE_WAIT_S, worker._notifier.watchdog_interval or IDLE_WAIT_S)
        self._next_tick = 0.0
        # basic.consume last: it returns once the broker confirmed it, and deliveries may follow at once (even
        # while py-amqp waits for consume-ok): from here on the worker's replies and settlings come to this session
        worker._session = self
        self._consumer_tag = channel.basic_consume(worker._queue.name, callback=self._on_message)
        self._take_read_ahead()  # from here on the broker's socket is read by ``_read`` alone

    # -- the loop --------------------------------------------------------------

    def drain(self, conn: Connection, raw: Any) -> None:
        """Wait for the broker's socket, the inbox or a timer; read everything the broker sent; send due retries.
        What the pipeline deferred meanwhile (the journal's record of a read-only command) runs once this pass's
        frames are written: the replies go out first."""
        begin_pass()  # not a ``with collecting()``: a generator per pass costs more than it is worth here
        try:
            self._drain()
        finally:
            end_pass()

    def _drain(self) -> None:
        self.flush()  # what came while py-amqp waited (basic.consume, basic.cancel) or since the last pass
        if self._broken is not None:
            raise self._broken
        worker = self._worker
        inbox = worker._inbox
        inbox.asleep = True  # set before the inbox is looked at: see _Inbox.put
        try:
            events = self._poll.poll(0 if inbox else self._timeout())
        finally:
            inbox.asleep = False
        for fd, _ in events:
            if fd == inbox.fd:
                inbox.drain_pipe()
            else:
                self._read()
        if inbox:
            worker._take_inbox()
        if self._raw.heartbeat and (now := time.monotonic()) >= self._next_tick:  # not on every message
            self._next_tick = now + HEARTBEAT_TICK_S
            self._raw.heartbeat_tick(rate=2)
        if self._later:
            self._send_due()
        self.flush()

    def flush(self) -> None:
        """Write the frames collected since the last write in one go; then the replies written without
        confirms are done (their acks, collected meanwhile, go in the next round of this loop)."""
        out = self._out
        while out and self._broken is None:
            data = b"".join(out)
            out.clear()
            written, self._written = self._written, []
            try:
                self._raw.transport.write(data)
            except Exception as exc:  # done comes from lost(), once the loop has raised this
                self._broken = exc
                self._orphans += written
                return
            for done in written:
                done(None)
        out.clear()  # broken: nothing more goes out on this connection

    def _timeout(self) -> float:
        if not self._later:
            return self._wait_s
        return max(min(self._wait_s, self._later[0][0] - time.monotonic()), 0)

    def _read(self) -> None:
        """Every frame the broker has sent, then each dispatched in turn (deliveries, confirms).

        The socket is read in chunks without blocking (``MSG_DONTWAIT``: its timeout is never switched) and the
        whole frames are cut out of them here; py-amqp's own reader asks the socket for each frame's header,
        payload and end octet in turn, three ``recv`` per frame. A frame half-read when the socket runs dry is
        kept for the next read. Other transports (TLS) than plain TCP go through ``drain_events``."""
        raw = self._raw
        if not self._plain_tcp:
            while True:
                try:
                    raw.drain_events(timeout=0)
                except TimeoutError:
                    return
        buf, recv = self._rbuf, self._sock.recv
        while True:
            try:
                chunk = recv(RECV_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                raise ConnectionLost("the broker closed the connection")
            buf += chunk
            if len(chunk) < RECV_CHUNK:
                break
        on_frame, consuming, replies = raw.on_inbound_frame, self._consuming_id, self._replies_id
        for frame in self._frames():
            frame_type, channel, payload = frame
            if channel == consuming and (frame_type != 1 or payload[:4] == _DELIVER):
                self._on_content(frame_type, payload)
            elif channel == replies and frame_type == 1 and payload[:4] == _ACK:
                raw.bytes_recv += 1  # what py-amqp counts for the heartbeats
                tag, multiple = _TAG_AND_BIT.unpack_from(payload, 4)
                self._on_ack(tag, bool(multiple & 1))
            else:  # everything else (heartbeats, nacks, the broker closing a channel …) as py-amqp reads it
                on_frame(frame)

    def _on_content(self, frame_type: int, payload: bytes) -> None:
        """A delivery's frames (basic.deliver, its content header, its body) read without py-amqp's channel
        dispatch, promises and Message; its properties decoded as py-amqp decodes them (``amqp_properties``)."""
        self._raw.bytes_recv += 1
        arriving = self._assembling
        if frame_type == 1:
            if arriving is not None:
                raise UnexpectedFrame("basic.deliver while a delivery's content was expected")
            tag, redelivered = _TAG_AND_BIT.unpack_from(payload, 5 + payload[4])  # past the consumer tag
            self._assembling = _Arriving(tag, bool(redelivered & 1))
            return
        if arriving is None or frame_type != (2 if arriving.properties is None else 3):
            raise UnexpectedFrame(f"frame type {frame_type} on the consuming channel out of order")
        if frame_type == 2:
            (arriving.size,) = _BODY_SIZE.unpack_from(payload, 4)
            arriving.properties = decode_properties(payload, 12)
        else:
            arriving.parts.append(payload)
            arriving.received += len(payload)
        if arriving.received >= arriving.size:
            self._assembling = None
            body = arriving.parts[0] if len(arriving.parts) == 1 else b"".join(arriving.parts)
            self._deliver(arriving.tag, arriving.redelivered, arriving.properties, body)

    def _frames(self) -> list[tuple[int, int, bytes]]:
        """The whole frames at the start of the read buffer, taken out of it."""
        buf, frames, start, size = self._rbuf, [], 0, len(self._rbuf)
        unpack = FRAME_HEADER.unpack_from
        while size - start >= 8:
            frame_type, channel, length = unpack(buf, start)
            end = start + 7 + length
            if end >= size:
                break
            if buf[end] != FRAME_END:
                raise UnexpectedFrame(f"Received frame_end {buf[end]:#04x} while expecting 0xce")
            frames.append((frame_type, channel, bytes(buf[start + 7 : end])))
            start = end + 1
        del buf[:start]
        return frames

    def _sock_readable(self, timeout: float) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.select(timeout)
        finally:
            selector.close()

    def _take_read_ahead(self) -> None:
        """What py-amqp read of a frame it did not finish (while it waited for a reply of the broker) is ours."""
        transport = self._raw.transport
        self._rbuf[:0] = transport._read_buffer
        transport._read_buffer = b""

    def _give_read_ahead(self) -> None:
        """Before py-amqp reads the socket itself again: the part of a frame read already is its."""
        transport = self._raw.transport
        transport._read_buffer = bytes(self._rbuf) + transport._read_buffer
        self._rbuf.clear()

    def cancel(self) -> None:
        """Stopping: no more deliveries; the loop goes on until those in flight are settled."""
        for _ in range(50):  # a delivery half-read is read to its end first: py-amqp could not make sense of it
            if self._assembling is None:
                break
            self._sock_readable(0.1)
            self._read()
        self.flush()
        self._give_read_ahead()  # py-amqp reads the socket until basic.cancel-ok
        try:
            self._channel.basic_cancel(self._consumer_tag)
        finally:
            self._take_read_ahead()

    def lost(self) -> None:
        """The connection is gone (or the loop stopped): replies not confirmed are given up (see the module)."""
        self.alive = False
        self._give_read_ahead()  # closing the connection, py-amqp reads the socket itself again
        with contextlib.suppress(Exception):
            self._poll.close()
        waiting = [done for _, done, _ in self._unconfirmed.values()] + [entry[3] for entry in self._later]
        waiting += self._orphans + self._written
        self._unconfirmed.clear()
        self._later.clear()
        self._orphans.clear()
        self._written.clear()
        self._out.clear()
        for done in waiting:
            done(ConnectionLost("the connection went before the broker confirmed the reply"))

    # -- one message -----------------------------------------------------------

    def _on_message(self, message: AmqpMessage) -> None:
        """A delivery py-amqp read (while it waited for the broker's answer to basic.cancel)."""
        body = message.body
        info = message.delivery_info
        body = body if isinstance(body, bytes) else str(body).encode()
        self._deliver(info["delivery_tag"], bool(info.get("redelivered")), message.properties, body)

    def _deliver(self, tag: int, redelivered: bool, props: dict[str, Any], body: bytes) -> None:
        delivery = Delivery(
            body=body,
            content_type=props.get("content_type"),
            headers=MappingProxyType(props.get("application_headers") or {}),  # decoded for it alone: no copy
            message_id=props.get("message_id"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            redelivered=redelivered,
        )
        self._worker._receive(delivery, _Port(self._worker, self, tag, props.get("message_id")))

    def publish(self, outgoing: Outgoing, done: Done, nacks: int = 0) -> None:
        if self._broken is not None:  # a write failed already: the loop is about to find the connection lost
            self._orphans.append(done)
            return
        if self._confirms:
            self._tag += 1
            self._unconfirmed[self._tag] = (outgoing, done, nacks)  # before writing: see lost()
        # the frames py-amqp's basic_publish writes, without what it adds per call (a read of the socket for
        # connection.blocked, a promise, a socket timeout switched back and forth, a Message; with confirms on in
        # the connection's options, a wait for the confirm that this loop reads instead)
        try:
            self._out.append(_publish_frames(self._replies_id, self._raw.frame_max, outgoing))  # see flush()
            self._raw.bytes_sent += 1  # what py-amqp counts for the heartbeats
        except Exception as exc:  # done comes from lost(), once the loop has raised this
            self._broken = exc
            if not self._confirms:
                self._orphans.append(done)
            return
        if not self._confirms:
            self._written.append(done)  # done once written to the socket: nothing more to wait for

    def settle(self, tag: int, ack: bool) -> None:
        """basic.ack, or basic.reject with requeue, framed as py-amqp frames them (see ``publish``), written
        with the pass's other frames (``flush``). A write that fails leaves the message to the broker, which
        delivers it again once the connection is gone."""
        if self._broken is not None:
            return
        try:
            self._out.append(settle_frame(self._consuming_id, tag, ack))
            self._raw.bytes_sent += 1
        except Exception as exc:
            self._broken = exc

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        for _, done, _ in self._confirmed(delivery_tag, multiple):
            done(None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for outgoing, done, nacks in self._confirmed(delivery_tag, multiple):
            nacks += 1
            if nacks > NACK_RETRIES:
                done(MessageNacked(f"the broker nacked the reply {nacks} times"))
                continue
            pause = min(0.1 * 2 ** (nacks - 1), NACK_BACKOFF_MAX_S)
            log.warning("[%s] the broker nacked the reply; again in %.1f s", outgoing.message_id, pause)
            heapq.heappush(self._later, (time.monotonic() + pause, next(self._order), outgoing, done, nacks))

    def _confirmed(self, delivery_tag: int, multiple: bool) -> list[tuple[Outgoing, Done, int]]:
        if not multiple:
            entry = self._unconfirmed.pop(delivery_tag, None)
            return [entry] if entry is not None else []
        tags = [tag for tag in self._unconfirmed if tag <= delivery_tag]  # in the order sent
        return [self._unconfirmed.pop(tag) for tag in tags]

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _, _, outgoing, done, nacks = heapq.heappop(self._later)
            self.publish(outgoing, done, nacks)


def _publish_frames(channel: int, frame_max: int, outgoing: Outgoing) -> bytes:
    """basic.publish of a reply, transient, to the default exchange: its frames as py-amqp frames them."""
    # the property flags and properties as py-amqp's ``dumps("ssFoss", …)`` encodes them; headers of text (what
    # the pipeline sets) are encoded by ``table``, a tenth of py-amqp's cost
    properties = b"".join(
        (
            _REPLY_FLAGS_TYPE_AND_ENCODING,
            table(outgoing.headers),
            _TRANSIENT,
            shortstr(outgoing.correlation_id),
            shortstr(outgoing.message_id),
        )
    )
    method = publish_method(channel, "", outgoing.routing_key)
    return publish_frames(channel, frame_max, method, properties, outgoing.body)


class _Arriving:
    """A delivery being read: its tag and redelivered bit, then its properties and body size, then its body."""

    __slots__ = ("parts", "properties", "received", "redelivered", "size", "tag")

    def __init__(self, tag: int, redelivered: bool):
        self.tag, self.redelivered = tag, redelivered
        self.properties: dict[str, Any] | None = None
        self.size = 0
        self.received = 0
        self.parts: list[bytes] = []


# -- memory:// -------------------------------------------------------------------------------------------------


class _KombuSession:
    """memory://: kombu's Consumer on one connection, and its channel for the replies, used by the consumer
    thread alone."""

    def __init__(self, worker: Worker, conn: Connection, channel: Any):
        self._worker = worker
        self.alive = True
        self._consumer = Consumer(channel, queues=[worker._queue], on_message=self._on_message, auto_declare=True)
        self._consumer.qos(prefetch_count=worker._prefetch)
        self._channel = channel
        worker._session = self  # before consuming: see _AmqpSession
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
        self._worker._receive(delivery, _Port(self._worker, self, message, props.get("message_id")))

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """The message kombu's Producer would build (the body is JSON bytes already), published as it would."""
        channel = self._channel
        message = channel.prepare_message(
            outgoing.body, None, JSON_CONTENT_TYPE, "utf-8", dict(outgoing.headers), _reply_properties(outgoing)
        )
        try:
            channel.basic_publish(message, exchange="", routing_key=outgoing.routing_key)
        except Exception as exc:  # the message goes back when the channel goes
            done(exc)
            return
        done(None)

    def settle(self, message: Message, ack: bool) -> None:
        message.ack() if ack else message.requeue()


def _reply_properties(outgoing: Outgoing) -> dict[str, Any]:
    return {"delivery_mode": 1, "correlation_id": outgoing.correlation_id, "message_id": outgoing.message_id}


# -- Redis -----------------------------------------------------------------------------------------------------


class _RedisSession:
    """Redis: the host queue read with the session's own BRPOP; kombu's unacked bookkeeping, the replies and
    the acks written by the session itself; used by the consumer thread alone.

    kombu's channel keeps its part: it declares the queue and its binding (what a kombu orchestrator's publish
    looks up); its QoS holds the deliveries not yet settled, so that when the channel closes (a lost connection,
    the end) kombu restores them from their records at once; its ``restore_visible`` hands out again whatever
    any worker left unsettled for longer than the visibility timeout (here on a timer, ``_restore_every``, busy
    or idle). What is not kombu's: the reading and writing (kombu's poller, its Message objects, its redis-py
    client and its transaction waited for per delivery cost more than the rest of the path).

    One connection (``_sock``, set up by redis-py, then written and read here) carries the BRPOP and, in front
    of each next BRPOP, what the worker writes: a delivery's record (kombu's ZADD + HSET, as kombu's
    ``QoS.append`` writes them, in one MULTI/EXEC), sent before the message is handed over as kombu does (from
    then on Redis gives it back after the visibility timeout whatever becomes of this process: a worker killed
    mid-command); then the reply and the ack in one MULTI/EXEC, with the next BRPOP in the same write. An inline
    command costs two writes and the reads of their answers: the answers are not waited for, they are read
    when they come, in order, in front of the BRPOP's. While a BRPOP waits, a reply from the pool goes out on
    the ``_RedisBook``'s connection, once the answers owed on this one are read: then every record it acks is
    in. The loop waits on this socket and the inbox's wake-up pipe together: no polling.

    Between Redis popping a message and its record, a process killed loses it, as with kombu's consumer;
    stopping (``cancel``) cuts the BRPOP short and reads its answer, so that nothing popped is dropped.
    """

    def __init__(self, worker: Worker, conn: Connection, channel: Any):
        from kombu.transport.virtual import QoS
        from kombu.utils.json import dumps as json_dumps
        from redis.exceptions import ResponseError

        self._worker = worker
        self.alive = True
        self._channel = channel
        self._json = json_dumps
        self._base64 = channel.body_encoding == "base64" and not channel.default_priority  # kombu's defaults
        # the replies' delivery tags: kombu's are uuid4s; these look the same (random, then a count: unique
        # without a uuid4 per reply)
        self._tag_base, self._tags = str(uuid.uuid4())[:24], itertools.count()
        queue = worker._queue
        queue.bind(channel).declare()
        channel.basic_qos(0, worker._prefetch, False)  # kombu's in-memory accounting, as for kombu's consumer
        self._qos = qos = channel.qos
        self._remember, self._forget = QoS.append, QoS.ack  # the in-memory part of kombu's bookkeeping
        prefix = channel.global_keyprefix or ""  # what kombu's prefixing client adds to every key
        self._prefix = prefix
        self._index, self._table = prefix + qos.unacked_index_key, prefix + qos.unacked_key
        keys = [prefix + channel._q_for_pri(queue.name, pri) for pri in channel.priority_steps]  # kombu's keys
        wait = channel.brpop_timeout or 1
        self._brpop = _resp((("BRPOP", *keys, wait),))
        # a live Redis answers a BRPOP within its timeout: one unanswered this much longer is a dead connection
        # (a half-open socket never becomes readable), as kombu's poller judges it
        self._overdue_s = wait + (channel.health_check_interval or 25)
        self._restore_every = min(RESTORE_MAX_S, max(channel.visibility_timeout / 4, RESTORE_MIN_S))
        self._restore_limit = channel.unacked_restore_limit
        self._book = _RedisBook(channel)  # the second connection: replies while a BRPOP waits
        self._pool = channel.pool
        self._conn = self._pool.get_connection()  # connected, authenticated, its database selected
        self._conn.send_command("CLIENT", "ID")
        try:
            self._client_id: int | None = self._conn.read_response()
        except ResponseError:  # refused (ACL): a stop waits for the BRPOP's timeout instead
            self._client_id = None
        self._sock = self._conn._sock  # from here on written and read here alone
        self._tls = hasattr(self._sock, "pending")
        self._rbuf = bytearray()  # what was read past the last whole answer
        self._unparsed = (
            False  # what ``_read_owed`` read past the answers owed (the BRPOP's, maybe): not seen by select
        )
        self._owed = 0  # answers Redis owes in front of the BRPOP's
        self._out: list[bytes] = []  # commands written at the end of the pass (in RESP), and how many
        self._out_count = 0
        # what every record and ack repeats, packed once
        self._zadd = b"".join((b"*4\r\n", _bulk(b"ZADD"), _bulk(self._index.encode())))
        self._hset = b"".join((b"*4\r\n", _bulk(b"HSET"), _bulk(self._table.encode())))
        self._zrem = b"".join((b"*3\r\n", _bulk(b"ZREM"), _bulk(self._index.encode())))
        self._hdel = b"".join((b"*3\r\n", _bulk(b"HDEL"), _bulk(self._table.encode())))
        self.waiting = False  # a BRPOP was sent and its answer not read
        self._sent_at = 0.0
        self._next_restore = 0.0  # at once: what an earlier worker left
        self._unsettled = 0
        self._cancelled = False
        self._reply: tuple[str, str] | None = None  # the reply published, waiting for its message's ack
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(worker._inbox.fd, selectors.EVENT_READ)
        self._answering = selectors.DefaultSelector()  # the socket alone: see _read_owed
        self._answering.register(self._sock, selectors.EVENT_READ)
        self._wait_s = min(IDLE_WAIT_S, worker._notifier.watchdog_interval or IDLE_WAIT_S)
        worker._session = self

    # -- the loop --------------------------------------------------------------

    def drain(self, conn: Connection, raw: Any) -> None:
        """Wait for the socket or the inbox; read the answers and the message that came; take the inbox; write
        what the pass wrote (with the next BRPOP, within the prefetch)."""
        worker = self._worker
        now = time.monotonic()
        if now >= self._next_restore:
            self._next_restore = now + self._restore_every
            self._qos.restore_visible(num=self._restore_limit, interval=1)  # its own throttle: see __init__
        if self._unparsed:
            self._unparsed = False
            self._answers()
        self._write()
        inbox = worker._inbox
        pending = self._tls and self._sock.pending()  # TLS: read from the socket already, not seen by select
        inbox.asleep = True  # set before the inbox is looked at: see _Inbox.put
        try:
            events = self._selector.select(0 if inbox or pending or self._unparsed else self._wait_s)
        finally:
            inbox.asleep = False
        readable = pending
        for key, _ in events:
            if key.fd == inbox.fd:
                inbox.drain_pipe()
            else:
                readable = True
        if readable or self._unparsed:
            self._unparsed = False
            if readable:
                self._recv()
            self._answers()
        elif self.waiting and time.monotonic() - self._sent_at > self._overdue_s:
            raise ConnectionLost(f"Redis did not answer a BRPOP within {self._overdue_s:g} s")
        if inbox:
            worker._take_inbox()
        self._write()

    def _write(self) -> None:
        """What the pass wrote, in one write: on this connection with the next BRPOP in front of it; while a
        BRPOP waits, on the book's, once every record this one carried is in (its answers read)."""
        out = self._out
        ask = not self.waiting and not self._cancelled and self._unsettled < self._worker._prefetch
        if self.waiting:
            if out:
                self._read_owed()
                self._book.send(b"".join(out), self._out_count)
                out.clear()
                self._out_count = 0
            return
        if not out and not ask:
            return
        if ask:
            out.append(self._brpop)
        data = b"".join(out)
        out.clear()
        self._send(data)
        self._owed += self._out_count
        self._out_count = 0
        if ask:
            self.waiting, self._sent_at = True, time.monotonic()

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"writing to Redis failed: {exc}") from exc

    def _recv(self) -> None:
        try:
            chunk = self._sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ConnectionLost(f"reading from Redis failed: {exc}") from exc
        if not chunk:
            raise ConnectionLost("Redis closed the connection")
        self._rbuf += chunk

    def _answers(self) -> None:
        """Every whole answer read: those owed (an error fails the connection), then the BRPOP's."""
        buf = self._rbuf
        pos = 0
        try:
            while True:
                if self._owed:
                    pos = _owed_answer(buf, pos)
                    self._owed -= 1
                    continue
                answer, pos = _resp_answer(buf, pos)
                if self.waiting:
                    self.waiting = False
                    del buf[:pos]  # before the message is handed over (its record is read after it)
                    pos = 0
                    if answer is None:  # timed out (or cut short): idle, the book's answers are read
                        self._book.flush()
                    else:
                        self._deliver(answer[1])
                else:
                    raise ConnectionLost(f"Redis answered nothing that was asked: {answer!r:.100}")
        except _Incomplete:
            del buf[:pos]

    def _read_owed(self) -> None:
        """Read until every answer owed is in (Redis sent them before it began the BRPOP: they come at once);
        the BRPOP's answer, should it come along, is left for the next pass."""
        buf = self._rbuf
        pos = 0
        while self._owed:
            try:
                pos = _owed_answer(buf, pos)
            except _Incomplete:
                del buf[:pos]
                pos = 0
                self._recv_blocking()
                continue
            self._owed -= 1
        del buf[:pos]
        self._unparsed = bool(buf)

    def _recv_blocking(self) -> None:
        buffered = self._tls and self._sock.pending()
        if not buffered and not self._answering.select(self._overdue_s):  # a half-open socket: never readable
            raise ConnectionLost(f"Redis did not answer within {self._overdue_s:g} s")
        self._recv()

    def _deliver(self, payload: bytes) -> None:
        """kombu's message (its JSON) as kombu's channel decodes it, recorded as kombu records it, handed over."""
        try:
            message = json.loads(payload)
            props = message["properties"]
            info = props["delivery_info"]
            tag = str(props["delivery_tag"])
            # kombu's record, [message, exchange, routing key] in JSON, with the message as it came
            record = b"[%s,%s,%s]" % (
                payload,
                json.dumps(info["exchange"]).encode(),
                json.dumps(info["routing_key"]).encode(),
            )
            headers = message.get("headers") or {}
            body = _kombu_body(self._channel, message, props, headers)
        except Exception as exc:  # popped, and nothing can restore it: kombu's consumer would have lost it too
            log.error(
                "a message on %s that is not kombu's was dropped (%s): %r", self._worker._queue.name, exc, payload[:200]
            )
            return
        btag = _bulk(tag.encode())
        self._send(
            b"".join(
                (_MULTI, self._zadd, _bulk(repr(time.time()).encode()), btag, self._hset, btag, _bulk(record), _EXEC)
            )
        )
        self._owed += 4
        self._remember(self._qos, tag, tag)
        self._unsettled += 1
        delivery = Delivery(
            body=body,
            content_type=message.get("content-type"),
            headers=headers,
            message_id=props.get("message_id"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            redelivered=bool(info.get("redelivered")),
        )
        self._worker._receive(delivery, _Port(self._worker, self, tag, props.get("message_id")))

    def cancel(self) -> None:
        """No BRPOP from now on; one waiting is cut short (``CLIENT UNBLOCK``: it answers as if timed out, or
        with the message Redis had popped for it, which the pipeline, stopping, gives back). The loop reads its
        answer before it lets the connection go (``_Consumer.busy``)."""
        self._cancelled = True
        if self.waiting and self._client_id is not None:
            try:
                with self._channel.conn_or_acquire() as client:  # a pooled connection, as kombu's restore's
                    client.execute_command("CLIENT", "UNBLOCK", self._client_id)
            except Exception as exc:  # its own timeout ends it instead
                log.debug("CLIENT UNBLOCK failed: %s", exc)

    def lost(self) -> None:
        self.alive = False
        self._selector.close()
        self._answering.close()
        self._book.close()
        self._conn.disconnect()
        self._pool.release(self._conn)

    # -- replies and settling --------------------------------------------------

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """The message kombu's Producer would build (the body is JSON bytes already), as kombu's channel would
        LPUSH it; written together with its message's ack, in one MULTI/EXEC, when ``done`` settles the message
        (right away, on this thread): never an ack without the reply nor a reply without the ack. Should
        nothing settle it within ``done``, the reply goes out alone. Written at the end of the pass: a write
        that fails leaves the message to Redis, which hands it out again (the journal answers it)."""
        queue = outgoing.routing_key
        if self._base64:  # kombu's prepare_message and _inplace_augment_message, in one go
            message = {
                "body": base64.b64encode(outgoing.body).decode(),
                "content-encoding": "utf-8",
                "content-type": JSON_CONTENT_TYPE,
                "headers": dict(outgoing.headers),
                "properties": _reply_properties(outgoing)
                | {
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": f"{self._tag_base}{next(self._tags):012x}",
                },
            }
        else:
            channel = self._channel
            message = channel.prepare_message(
                outgoing.body, None, JSON_CONTENT_TYPE, "utf-8", dict(outgoing.headers), _reply_properties(outgoing)
            )
            channel._inplace_augment_message(message, "", queue)
        try:
            text = json.dumps(message)  # the C encoder; kombu's makes an encoder per call
        except TypeError:  # a header only kombu's encoder knows (a UUID, a datetime …)
            text = self._json(message)
        self._reply = (self._prefix + queue, text)
        try:
            done(None)
        finally:
            reply, self._reply = self._reply, None
        if reply is not None:
            self._out += (_MULTI, _lpush(reply), _EXEC)
            self._out_count += 3

    def settle(self, tag: str, ack: bool) -> None:
        self._unsettled -= 1
        out = self._out
        reply, self._reply = self._reply, None
        if ack:
            btag = _bulk(tag.encode())
            if reply is not None:
                out += (_MULTI, _lpush(reply), self._zrem, btag, self._hdel, btag, _EXEC)
                self._out_count += 5
            else:
                out += (_MULTI, self._zrem, btag, self._hdel, btag, _EXEC)
                self._out_count += 4
            self._forget(self._qos, tag)
            return
        if reply is not None:
            out += (_MULTI, _lpush(reply), _EXEC)
            self._out_count += 3
        # kombu restores the message from its record on a connection of its own: the record and what went
        # before are in first
        self._write()
        self._read_owed()
        self._book.flush()
        self._qos.reject(tag, requeue=True)


_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _lpush(reply: tuple[str, str]) -> bytes:
    key, message = reply
    return b"".join((b"*3\r\n$5\r\nLPUSH\r\n", _bulk(key.encode()), _bulk(message.encode())))


class _Incomplete(Exception):
    """The answer is not all read yet."""


def _resp_answer(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One answer of Redis's protocol (RESP2 or RESP3) from ``buf`` at ``pos``: its value (an error as a
    ``_RedisError``) and where the next begins; ``_Incomplete`` when it is not all there."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind in b"$=!":  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        data = bytes(buf[pos : pos + size])
        return (_RedisError(data) if kind == 33 else data), pos + size + 2
    if kind in b"*~>%|":  # array, set, push, map (and attribute): their items in a row
        count = int(line)
        if count < 0:
            return None, pos
        if kind in b"%|":
            count *= 2
        items = []
        for _ in range(count):
            item, pos = _resp_answer(buf, pos)
            items.append(item)
        if kind == 124:  # an attribute: the answer follows it
            return _resp_answer(buf, pos)
        if kind == 62:  # a push (out of band, never asked for here): not an answer
            return _resp_answer(buf, pos)
        return items, pos
    if kind == 45:  # "-": an error
        return _RedisError(line), pos
    if kind == 95:  # "_": null
        return None, pos
    return line, pos  # +simple, :integer, ,double, #boolean, (big number: the worker needs none of them


def _owed_answer(buf: bytearray, pos: int) -> int:
    """Past one answer owed to the worker's writes (``+OK``, ``+QUEUED``, a transaction's integers), read
    without building it; an error in it raises (``_raise_error``)."""
    if pos >= len(buf):
        raise _Incomplete
    kind = buf[pos]
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    if kind == 43 or kind == 58:  # "+", ":"
        return end + 2
    if kind != 42:  # not "*": anything else, an error among them
        answer, end = _resp_answer(buf, pos)
        _raise_error(answer)
        return end
    at = end + 2
    for _ in range(int(buf[pos + 1 : end])):
        if at >= len(buf):
            raise _Incomplete
        if buf[at] != 58:  # not an integer: the whole answer, built
            answer, end = _resp_answer(buf, pos)
            _raise_error(answer)
            return end
        end = buf.find(b"\r\n", at)
        if end < 0:
            raise _Incomplete
        at = end + 2
    return at


class _RedisError(bytes):
    """An error answer."""


def _raise_error(answer: Any) -> None:
    """An answer owed to the worker's writes that is an error, or a transaction's with one, fails the
    connection: what was written after it is out of step (kombu's restore hands its messages out again)."""
    if isinstance(answer, _RedisError) or (
        isinstance(answer, list) and any(isinstance(part, _RedisError) for part in answer)
    ):
        raise ConnectionLost(f"Redis refused what the worker wrote: {answer!r:.200}")


def _kombu_body(channel: Any, message: dict[str, Any], props: dict[str, Any], headers: dict[str, Any]) -> bytes:
    """The body as kombu's Message gives it: decoded (base64, kombu's default), then decompressed when its
    headers say so."""
    body = message.get("body")
    if body:
        body = channel.decode_body(body, props.get("body_encoding"))
    data = b"" if body is None else body if isinstance(body, bytes) else str(body).encode()
    compression = headers.get("compression")
    if compression:
        from kombu.compression import decompress

        with contextlib.suppress(Exception):  # kombu's Message keeps the body as it came, too
            data = decompress(data, compression)
    return data


class _RedisBook:
    """The Redis session's second connection: what the worker writes while its BRPOP waits on the first.

    Nothing is waited for: Redis has the commands and runs them in order (a transaction that failed leaves
    its message unacked, and Redis hands it out again after the visibility timeout, as after a crash: the
    journal answers it); the answers are read in batches (``UNREAD_MAX``, and whenever the session is idle),
    and a failed one then fails the connection.
    """

    def __init__(self, channel: Any):
        self._pool = channel.pool
        self._conn = self._pool.get_connection()
        self._unread = 0  # answers Redis owes on the connection

    def send(self, commands: bytes, count: int) -> None:
        """``count`` commands, in RESP."""
        # no health check: its PING would read an answer owed to an earlier command
        self._conn.send_packed_command([commands], check_health=False)
        self._unread += count
        if self._unread >= UNREAD_MAX:
            self.flush()

    def flush(self) -> None:
        """Read every answer Redis owes; an error in any of them fails the connection (its replies are
        out of step with what was sent)."""
        conn = self._conn
        try:
            while self._unread:
                answer = conn.read_response()  # raises an error answer
                self._unread -= 1
                for part in answer if isinstance(answer, list) else ():
                    if isinstance(part, Exception):
                        raise part
        except BaseException:
            self._unread = 0
            conn.disconnect()
            raise

    def close(self) -> None:
        self._unread = 0
        self._conn.disconnect()
        self._pool.release(self._conn)


def _resp(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """Commands in Redis's protocol (RESP), as redis-py's packer writes them, at a fraction of its cost."""
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if isinstance(arg, bytes) else (repr(arg) if isinstance(arg, float) else str(arg)).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
