"""Publishing from any thread over one connection that one thread owns.

``publish_async(body, …, done=…)`` hands the message to the publishing thread and returns at once; that thread
calls ``done(None)`` once the broker has taken the message, or ``done(exc)`` once it never will. ``publish`` is
the same, waiting for ``done``. Callers never touch the connection: kombu connections are not thread-safe.

AMQP with publisher confirms (the default): the thread puts its channel in confirm mode, publishes without
waiting, and matches each ``basic.ack``/``basic.nack`` to its message by delivery tag (``multiple``: every
message up to that tag), so that many callers' messages are on the wire at once.

- A nack (RabbitMQ refuses publishes to a quorum queue while it elects a leader): the same message again after a
  pause that doubles, up to ``NACK_RETRIES`` times (about 17 s in all).
- A lost connection: every message not yet confirmed again, over the next failover URL. At least once: the broker
  may have taken a message whose confirm was lost; the worker's journal dedupes by msg_id. A message is given up
  (``done(exc)``) after ``LOSS_RETRIES`` connections lost under it or rounds of reconnecting failed while it
  waited (about 2 s of a broker that cannot be reached, as kombu's retry policy did before).

Without confirms (Redis, memory://, or AMQP with confirms off) the thread publishes with kombu's retry policy and
calls ``done(None)`` once the publish returned: there is nothing more to wait for.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import selectors
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from queue import Empty, SimpleQueue
from typing import Any

from amqp.exceptions import MessageNacked
from amqp.transport import TCPTransport
from kombu import Connection, Exchange, Producer

from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.protocol.urls import mask_secrets
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.transport import amqp_frames, resp
from kvmworker.transport.amqp_reading import ACK, TAG_AND_BIT, cut_frames, receive_fd
from kvmworker.transport.connection import HEARTBEAT_S, connection_errors, try_every_url

log = logging.getLogger("kvmworker.publisher")

Done = Callable[[BaseException | None], None]

# Without confirms: kombu's own retry (the same message again over the next failover URL), ~2 s in all.
RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
# With confirms: the same budget, counted per message (connections lost under it, failed reconnecting rounds).
LOSS_RETRIES = 3
RECONNECT_PAUSES_S = (0.2, 0.7, 1.2, 1.7, 2.0)
# Nacks: pauses of 0.1, 0.2, 0.4 … capped at 2 s; 12 of them cover ~17 s, a quorum queue's leader election.
NACK_RETRIES = 12
NACK_BACKOFF_MAX_S = 2.0
# A write the broker does not take for this long (it stopped reading: a memory or disk alarm) counts as a
# lost connection; so does a synchronous reply (a queue's declare-ok) that does not come.
SOCKET_TIMEOUT_S = 10.0
# An inline publish waits this long for the publishing thread to finish what it is doing with the connection
# (reading a confirm takes microseconds); past that the message goes to the publishing thread as usual.
INLINE_WAIT_S = 0.002
# While every unconfirmed message was written inline (by callers who wait for their replies, not for the confirm),
# the publishing thread reads confirms this often rather than as each comes in: one wake-up of it for many
# confirms, instead of one per message that takes the GIL just as the caller's reply arrives. A nack is retried
# after 0.1 s at the soonest anyway; a lost connection is noticed as late as this.
CONFIRMS_DEFERRED_S = 0.05


class PublisherClosed(RuntimeError):
    """The publisher was closed before the message could be published or confirmed."""


@dataclass
class PublishCounts:
    """What the publisher has done since it started (a snapshot)."""

    sent: int = 0  # basic.publish written, first attempts and retries
    confirmed: int = 0  # messages the broker acked (or, without confirms, publishes that returned)
    failed: int = 0  # messages given up: done(exc)
    nacked: int = 0  # nacks received (each is followed by a retry or a failure)
    resent: int = 0  # messages sent again after a nack or over a new connection
    multiple_acks: int = 0  # acks that confirmed several messages at once
    inline: int = 0  # messages the calling thread wrote itself (``publish_async(inline=True)``)
    batched: int = 0  # Redis: messages the publishing thread wrote with others queued behind them, in one write


@dataclass(eq=False)
class _Pending:
    """One message on its way, as the publishing thread sees it."""

    body: bytes
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    properties: dict[str, Any]  # delivery_mode, message_id, correlation_id, reply_to …
    declare: tuple[Any, ...]
    done: Done
    nacks: int = 0
    failures: int = 0  # connections lost under it, and reconnecting rounds it waited through in vain
    inline: bool = False  # written by the caller, not yet confirmed

    @property
    def msg_id(self) -> Any:
        return self.properties.get("message_id")


class Publisher:
    """Thread-safe. One publishing thread, started with the publisher, on a connection it opens when needed."""

    def __init__(self, connection: Connection, *, nack_retries: int = NACK_RETRIES, loss_retries: int = LOSS_RETRIES):
        self.confirms = _has_confirms(connection)
        if self.confirms:
            self._lane: _ConfirmingLane | _PlainLane = _ConfirmingLane(connection, nack_retries, loss_retries)
        else:
            self._lane = _PlainLane(connection)

    def publish_async(
        self,
        body: bytes,
        *,
        routing_key: str,
        done: Done,
        exchange: Exchange | str = "",
        persistent: bool = False,
        headers: dict[str, Any] | None = None,
        declare: tuple[Any, ...] = (),
        inline: bool = False,
        **properties: Any,
    ) -> None:
        """Queue the message and return at once; ``done`` is called once, later, from the publishing thread.

        ``inline``: the calling thread writes the message itself when the connection is up and nothing waits
        ahead of it (no hand-over to the publishing thread and back: a thread wake-up saved per message); the
        publishing thread still matches its confirm, and sends it again if the connection goes. The caller may
        then wait on the socket (a broker that stopped reading): never from an event loop. Without confirms,
        ``done`` may be called before this returns.
        """
        item = _Pending(
            body=body,
            exchange=exchange.name if isinstance(exchange, Exchange) else exchange,
            routing_key=routing_key,
            headers=headers or {},
            properties={"delivery_mode": 2 if persistent else 1, **properties},
            declare=tuple(declare),
            done=done,
        )
        if not (inline and self._lane.send_inline(item)):
            self._lane.put(item)

    def publish(self, body: bytes, *, routing_key: str, **options: Any) -> None:
        """``publish_async`` and wait: returns once the broker has the message, raises what it gave up on."""
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(exc: BaseException | None) -> None:
            outcome.append(exc)
            finished.set()

        self.publish_async(body, routing_key=routing_key, done=done, **options)
        finished.wait()  # always comes: every retry is bounded, and close() fails what is left
        if outcome[0] is not None:
            raise outcome[0]

    @property
    def counts(self) -> PublishCounts:
        return replace(self._lane.counts)

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued and wait for its confirms, up to ``timeout``; what is left fails."""
        self._lane.close(timeout)


def nacked(exc: BaseException) -> bool:
    """The broker refused the message (basic.nack), as opposed to a lost connection."""
    return isinstance(exc, MessageNacked) or isinstance(exc.__cause__, MessageNacked)


def _has_confirms(connection: Connection) -> bool:
    return connection.transport.driver_type == "amqp" and bool(connection.transport_options.get("confirm_publish"))


READ_AHEAD_BYTES = 64 * 1024


def read_ahead(raw: Any) -> None:
    """Make a py-amqp connection read what the socket has, not exactly the bytes of the frame part it parses.

    py-amqp reads a frame as its 7-byte header, its payload and its end octet, each with ``recv`` of exactly that
    size (with a timeout: a ``poll`` first): a message's three frames cost nine receives, each of which lets
    go of the GIL. Its reader keeps whatever a receive returned beyond what it asked for and parses it next
    (``TCPTransport._read``), so one receive of up to 64 KiB serves every frame already in the socket. A
    connection drained until its read times out (the publisher's, a consumer's) never leaves a whole frame
    in that buffer unseen. TLS connections read through their own path and are left as they are.
    """
    transport = getattr(raw, "transport", None)
    if not isinstance(transport, TCPTransport) or isinstance(transport._quick_recv, partial):
        return
    recv = transport._quick_recv
    transport._quick_recv = partial(_recv_ahead, recv)


FRAME_HEADER_BYTES = 7  # type, channel, size; then the payload and one end octet


def _frame_size(buffer: bytes) -> int:
    return int.from_bytes(buffer[3:7], "big")


def whole_frame_buffered(raw: Any) -> bool:
    """A py-amqp connection holds a whole frame it received (``read_ahead``) but has not parsed yet."""
    buffer = getattr(raw.transport, "_read_buffer", b"")
    return len(buffer) >= FRAME_HEADER_BYTES and len(buffer) > FRAME_HEADER_BYTES + _frame_size(buffer)


def _recv_ahead(recv: Callable[[int], bytes], size: int) -> bytes:
    return recv(max(size, READ_AHEAD_BYTES))


def publish_frames(channel: int, frame_max: int, item: _Pending) -> bytes | None:
    """basic.publish of ``item``: its frames byte for byte as py-amqp's frame writer writes them (its Python
    costs a caller's publish more than the write does); None for what this does not frame (a timestamp, a
    property py-amqp does not know, a name longer than a short string): py-amqp frames those."""
    command = _command_frames(channel, frame_max, item)
    if command is not None:
        return command
    properties = amqp_frames.encoded_properties(
        {
            "content_type": JSON_CONTENT_TYPE,
            "content_encoding": "utf-8",
            "application_headers": item.headers,
            **item.properties,
        }
    )
    if properties is None:
        return None
    try:
        method = amqp_frames.publish_method(channel, item.exchange, item.routing_key)
    except ValueError:  # a name over 255 bytes
        return None
    return amqp_frames.publish_frames(channel, frame_max, method, properties, item.body)


# A command (the client's): to a queue by name, with exactly these properties besides the content type and
# encoding and the headers; their property flags and what every command shares are encoded once.
_COMMAND_PROPERTIES = frozenset({"delivery_mode", "message_id", "correlation_id", "reply_to"})
_COMMAND_FLAGS = 0xF680  # content_type, content_encoding, headers, delivery_mode, correlation_id, reply_to, message_id
_COMMAND_SHARED = (
    _COMMAND_FLAGS.to_bytes(2, "big") + amqp_frames.shortstr(JSON_CONTENT_TYPE) + amqp_frames.shortstr("utf-8")
)
_DELIVERY_MODES = {1: b"\x01", 2: b"\x02"}
# The client's unsigned command's headers, in the order it sets them: the host (text), when it was issued and when
# it expires (floats). Their names and kinds are encoded once (``_command_headers``).
_CLIENT_HEADERS = (HEADER_HOST, HEADER_ISSUED_AT, HEADER_EXPIRES_AT)
_HOST_FIELD = amqp_frames.shortstr(HEADER_HOST) + b"S"
_ISSUED_FIELD = amqp_frames.shortstr(HEADER_ISSUED_AT) + b"d"
_EXPIRES_FIELD = amqp_frames.shortstr(HEADER_EXPIRES_AT) + b"d"
_TIMES_FIELDS = struct.Struct(f">{len(_ISSUED_FIELD)}sd{len(_EXPIRES_FIELD)}sd")
_LENGTHS = struct.Struct(">I")
_METHODS: dict[tuple[int, str], bytes] = {}  # (channel, routing key) → basic.publish's method frame
METHODS_KEPT = 1024


def _command_frames(channel: int, frame_max: int, item: _Pending) -> bytes | None:
    """``publish_frames`` of a command (see ``_COMMAND_PROPERTIES``) without the generic property walk: the same
    bytes; None for anything else."""
    properties = item.properties
    if item.exchange or properties.keys() != _COMMAND_PROPERTIES:
        return None
    mode = _DELIVERY_MODES.get(properties["delivery_mode"])
    correlation_id, reply_to = properties["correlation_id"], properties["reply_to"]
    message_id = properties["message_id"]
    if mode is None or not (type(correlation_id) is type(reply_to) is type(message_id) is str):
        return None
    method = _METHODS.get((channel, item.routing_key))
    try:
        if method is None:
            if len(_METHODS) >= METHODS_KEPT:
                _METHODS.clear()
            method = _METHODS[(channel, item.routing_key)] = amqp_frames.publish_method(channel, "", item.routing_key)
        shortstr = amqp_frames.shortstr
        encoded = b"".join(
            (
                _COMMAND_SHARED,
                _command_headers(item.headers),
                mode,
                shortstr(correlation_id),
                shortstr(reply_to),
                shortstr(message_id),
            )
        )
    except ValueError:  # a name or an id over 255 bytes
        return None
    return amqp_frames.publish_frames(channel, frame_max, method, encoded, item.body)


def _command_headers(headers: dict[str, Any]) -> bytes:
    """``amqp_frames.table(headers)``: the same bytes, the client's unsigned command's headers (``_CLIENT_HEADERS``)
    without the generic walk over names and kinds."""
    if tuple(headers) != _CLIENT_HEADERS:
        return amqp_frames.table(headers)
    host, issued, expires = headers.values()
    if type(host) is not str or type(issued) is not float or type(expires) is not float:
        return amqp_frames.table(headers)
    data = host.encode("utf-8", "surrogatepass")
    times = _TIMES_FIELDS.pack(_ISSUED_FIELD, issued, _EXPIRES_FIELD, expires)
    size = len(_HOST_FIELD) + 4 + len(data) + len(times)
    return b"".join((_LENGTHS.pack(size), _HOST_FIELD, _LENGTHS.pack(len(data)), data, times))


def _frames_received(transport: TCPTransport, sock: Any) -> list[tuple[int, int, bytes]]:
    """The whole frames in py-amqp's read buffer and the socket (read without blocking until it runs dry);
    what is left of a frame stays in that buffer. The socket has its timeout (``SOCKET_TIMEOUT_S``), so its
    descriptor is non-blocking: read by it (``receive_fd``; Python's ``recv`` would first wait for the socket, and
    switching the timeout off and on around it costs two system calls a read)."""
    if sock.gettimeout() is None:  # blocking (never left so by py-amqp's waits, which restore the timeout)
        sock.settimeout(SOCKET_TIMEOUT_S)
    buf = bytearray(transport._read_buffer)
    if not receive_fd(sock.fileno(), buf):
        raise ConnectionResetError("the broker closed the connection")
    frames = cut_frames(buf)
    transport._read_buffer = bytes(buf)
    return frames


def write_now(transport: Any, sock: Any, data: bytes) -> None:
    """``transport.write(data)`` without Python's wait for the socket to be writable: on a plain TCP socket with a
    timeout (a non-blocking descriptor) Python polls before each send, a system call (the GIL let go and taken
    back) per write; here the bytes go to the descriptor at once, and only what the socket does not take then (a
    full send buffer) goes through py-amqp's write, which waits for it within the timeout. A failed write marks
    py-amqp's transport disconnected, as its own write does."""
    if not isinstance(transport, TCPTransport) or sock.gettimeout() is None:
        transport.write(data)
        return
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.connected = False
        raise
    if sent < len(data):
        transport.write(memoryview(data)[sent:])


def _finish(item: _Pending, exc: BaseException | None) -> None:
    try:
        item.done(exc)
    except Exception:
        log.exception("[%s] the publish's done callback failed", item.msg_id)


# -- AMQP with confirms ----------------------------------------------------------------------------------------


class _ConfirmingLane:
    """The publishing thread with confirms: everything below runs on it, except ``put`` and ``close``."""

    def __init__(self, connection: Connection, nack_retries: int, loss_retries: int):
        # confirm_publish off for py-amqp itself (it would wait for each confirm): this thread selects confirm mode.
        # One kombu Connection, connected again in place after a loss: its failover cycle carries on from round
        # to round (a clone per attempt would start each round at the second URL).
        options = {**connection.transport_options, "confirm_publish": False}
        self._conn = connection.clone(transport_options=options)
        self._nack_retries, self._loss_retries = nack_retries, loss_retries
        self.counts = PublishCounts()
        self._inbox: deque[_Pending] = deque()  # from any thread
        self._ready: deque[_Pending] = deque()  # to be sent now: retries first
        self._later: list[tuple[float, int, _Pending]] = []  # nacked, waiting for their pause
        self._unconfirmed: OrderedDict[int, _Pending] = OrderedDict()  # by delivery tag, in the order sent
        self._order = itertools.count()
        self._raw: Any = None  # the py-amqp connection while connected
        self._sock: Any = None
        self._channel: Any = None
        self._tag = 0
        self._lost_before = False
        self._pauses = iter(RECONNECT_PAUSES_S)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pipe_only = selectors.DefaultSelector()  # confirms deferred: the socket is not watched
        self._pipe_only.register(self._wake_r, selectors.EVENT_READ)
        self._inline_unconfirmed = 0  # how many of the unconfirmed were written inline
        self._close_by: float | None = None  # monotonic deadline once close() was called
        self._stopped = False
        self._wake_lock = threading.Lock()  # the pipe is not written once closed (its fd may be reused)
        # Held by whoever touches the connection or the messages' state: the publishing thread (except while
        # it waits) or a caller publishing inline.
        self._io = threading.Lock()
        self._broken: BaseException | None = None  # an inline write failed: the thread treats it as a loss
        self._batch: list[bytes] | None = None  # the bytes of the publishes being batched (``_batched``)
        self._asleep = False  # the thread is (about to be) in select(): a new message must wake it
        self._woken = False  # a caller has written to the pipe since the thread last went to sleep
        self._thread = threading.Thread(target=self._run, name="kvmworker-publish", daemon=True)
        self._thread.start()

    # -- any thread --------------------------------------------------------------------------------------------

    def put(self, item: _Pending) -> None:
        self._inbox.append(item)
        if self._stopped:  # the thread is gone (closed): nobody else will take it
            self._fail_inbox()
        elif self._asleep and not self._woken:  # else it looks at the inbox before it sleeps again (see _wait)
            self._woken = True  # one wake-up per sleep, however many callers put a message before it wakes
            self._wake()

    def send_inline(self, item: _Pending) -> bool:
        """Write ``item`` on the calling thread if the connection is up and nothing is queued ahead of it (so
        that one thread's messages keep their order); False: it was not, ``put`` it."""
        if item.declare or not self._io.acquire(timeout=INLINE_WAIT_S):
            return False
        try:
            if self._channel is None or self._close_by is not None or self._broken or self._inbox or self._ready:
                return False
            frames = publish_frames(self._channel.channel_id, self._raw.frame_max, item)
            if frames is None:
                return False
            self._sending(item)
            self.counts.inline += 1
            item.inline = True
            self._inline_unconfirmed += 1
            try:
                self._write(frames)
            except Exception as exc:  # it is among the unconfirmed: it goes out again over the next connection
                self._broken = exc
                self._wake()
            return True
        finally:
            self._io.release()

    def close(self, timeout: float) -> None:
        self._close_by = time.monotonic() + timeout
        self._wake()
        self._thread.join(timeout + SOCKET_TIMEOUT_S)

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread just the same
            if not self._stopped:
                os.write(self._wake_w, b"\0")

    # -- the publishing thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._done():
                if self._channel is None and not self._has_work():
                    self._wait(None, for_work=True)  # idle and disconnected: connect when there is something to send
                elif self._channel is None:
                    self._connect()
                else:
                    self._turn()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("the publishing thread failed")
            with self._io:
                self._fail_all(exc)
        finally:
            with self._io:
                self._disconnect(clean=True)
            with self._wake_lock:
                self._stopped = True
                self._selector.close()
                self._pipe_only.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
            self._fail_inbox()

    def _done(self) -> bool:
        if self._close_by is None:
            return False
        if self._has_work() and time.monotonic() < self._close_by and self._channel is not None:
            return False
        with self._io:
            self._fail_all(PublisherClosed("the publisher was closed before the broker confirmed the message"))
        return True

    def _has_work(self) -> bool:
        return bool(self._inbox or self._ready or self._later or self._unconfirmed)

    def _turn(self) -> None:
        """Wait for the socket, a caller or a timer; read confirms; send what is ready."""
        deferring = self._deferring()
        readable = self._wait(self._next_timeout(deferring), for_work=True, watch_socket=not deferring)
        with self._io:
            try:
                if self._broken is not None:
                    broken, self._broken = self._broken, None
                    raise broken
                if readable or deferring or self._buffered():
                    self._read()
                if self._raw.heartbeat:
                    self._raw.heartbeat_tick(rate=2)
                self._take_inbox()
                self._take_due()
                self._send_ready()
            except Exception as exc:
                self._lost(exc)

    def _send_ready(self) -> None:
        """Everything ready, in order; the publishes between two declares leave in one write (see ``_batched``)."""
        while self._ready:
            if self._ready[0].declare:  # a declare waits for the broker's answer: its frames cannot wait
                self._send(self._ready.popleft())
                continue
            with self._batched():
                while self._ready and not self._ready[0].declare:
                    self._send(self._ready.popleft())

    @contextlib.contextmanager
    def _batched(self):
        """py-amqp writes each publish with a ``sendall`` of its own, and lets go of the GIL for each: here
        their bytes are collected and written at once. A failed write loses nothing: every message in it is
        already among the unconfirmed, which go out again over the next connection."""
        transport = self._raw.transport
        own = vars(transport).get("_write")  # TCP: the socket's sendall, set per connection; TLS: the class's
        chunks: list[bytes] = []
        transport._write = lambda data: chunks.append(bytes(data))  # py-amqp reuses its frame buffer: copied
        self._batch = chunks  # and the frames written here (``_write``), in the same order
        try:
            yield
        finally:
            self._batch = None
            if own is None:
                del transport._write
            else:
                transport._write = own
        if chunks:
            write_now(transport, self._sock, b"".join(chunks))

    def _wait(self, timeout: float | None, *, for_work: bool = False, watch_socket: bool = True) -> bool:
        """Block until woken, the broker's socket is readable, or ``timeout``; True if the socket is.

        ``for_work``: a caller's message ends the wait. Callers write to the wake pipe only while ``_asleep``
        (a syscall saved per message while this thread is busy); so it is set before the inbox is looked at.
        """
        self._woken = False
        self._asleep = for_work
        selector = self._selector if watch_socket else self._pipe_only
        try:
            events = selector.select(0 if for_work and self._inbox else timeout)
        finally:
            self._asleep = False
        readable = False
        for key, _ in events:
            if key.fileobj == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                readable = True
        return readable

    def _buffered(self) -> bool:
        """A whole frame already received but not yet read: a declare's wait (``_send``) may have received
        confirms behind its answer (``read_ahead``), which the socket will not signal again. (A part of a frame
        waits for the rest, which the socket does signal.)"""
        return whole_frame_buffered(self._raw)

    def _deferring(self) -> bool:
        """Every unconfirmed message was written inline, and nothing else waits: see ``CONFIRMS_DEFERRED_S``."""
        return (
            0 < self._inline_unconfirmed == len(self._unconfirmed)
            and not (self._inbox or self._ready or self._later)
            and self._close_by is None
        )

    def _next_timeout(self, deferring: bool = False) -> float | None:
        if self._inbox or self._ready or self._buffered():
            return 0
        now = time.monotonic()
        timeouts = [self._raw.heartbeat / 6] if self._raw.heartbeat else []
        if deferring:
            timeouts.append(CONFIRMS_DEFERRED_S)
        if self._later:
            timeouts.append(self._later[0][0] - now)
        if self._close_by is not None:
            timeouts.append(self._close_by - now)
        return max(min(timeouts), 0) if timeouts else None

    def _read(self) -> None:
        """Everything the broker has sent: confirms are dispatched to ``_on_ack``/``_on_nack`` as they are read.

        Plain TCP: the socket is read in chunks without blocking (``_frames_received``) and its whole frames cut out
        here; a ``basic.ack`` goes straight to ``_on_ack`` (py-amqp's frame handler and channel dispatch cost
        more than the rest of a confirm), every other frame to py-amqp as it reads it. A frame's part read
        ahead stays in py-amqp's read buffer, where its own next read (a declare's wait) carries on from.
        Otherwise (TLS) py-amqp reads, the socket switched to non-blocking once for all the frames (py-amqp would
        switch it there and back for each frame: two system calls a frame, each letting go of the GIL).
        """
        raw = self._raw
        transport = raw.transport
        if isinstance(transport, TCPTransport):
            for frame in _frames_received(transport, self._sock):
                frame_type, channel, payload = frame
                if frame_type == 1 and payload[:4] == ACK and channel == self._channel.channel_id:
                    raw.bytes_recv += 1  # as py-amqp counts a frame read: the heartbeats see the connection busy
                    tag, multiple = TAG_AND_BIT.unpack_from(payload, 4)
                    self._on_ack(tag, bool(multiple & 1))
                else:
                    raw.on_inbound_frame(frame)
            return
        sock = self._sock
        sock.settimeout(0)
        try:
            while True:
                try:
                    raw.drain_events(timeout=0)
                except TimeoutError:
                    return
        finally:
            sock.settimeout(SOCKET_TIMEOUT_S)

    def _take_inbox(self) -> None:
        while self._inbox:
            self._ready.append(self._inbox.popleft())

    def _take_due(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            self._ready.append(heapq.heappop(self._later)[2])

    def _send(self, item: _Pending) -> None:
        for entity in item.declare:
            try:
                entity.bind(self._channel).declare()
            except self._conn.channel_errors as exc:  # refused for good (e.g. other arguments): not retried
                self._fail(item, exc)
                raise
            except Exception:
                self._ready.appendleft(item)  # the connection went: declared and sent on the next one
                raise
        frames = publish_frames(self._channel.channel_id, self._raw.frame_max, item)
        self._sending(item)
        if frames is None:
            message = self._channel.prepare_message(
                item.body, None, JSON_CONTENT_TYPE, "utf-8", item.headers, item.properties
            )
            self._channel.basic_publish(message, exchange=item.exchange, routing_key=item.routing_key)
        else:
            self._write(frames)

    def _sending(self, item: _Pending) -> None:
        """Before writing: a write that fails half-way is sent again over the next connection."""
        self._tag += 1
        self._unconfirmed[self._tag] = item
        self.counts.sent += 1

    def _write(self, frames: bytes) -> None:
        if self._batch is not None:
            self._batch.append(frames)
        else:
            write_now(self._raw.transport, self._sock, frames)
        self._raw.bytes_sent += 1  # as py-amqp counts a frame written: the heartbeats see the connection busy

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        items = self._settled(delivery_tag, multiple)
        if len(items) > 1:
            self.counts.multiple_acks += 1
        for item in items:
            self.counts.confirmed += 1
            _finish(item, None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for item in self._settled(delivery_tag, multiple):
            self.counts.nacked += 1
            item.nacks += 1
            if item.nacks > self._nack_retries:
                self._fail(item, MessageNacked(f"the broker nacked the message {item.nacks} times"))
                continue
            pause = min(0.1 * 2 ** (item.nacks - 1), NACK_BACKOFF_MAX_S)
            log.warning(
                "[%s] the broker nacked the publish (a queue electing its leader?); again in %.1f s", item.msg_id, pause
            )
            self.counts.resent += 1
            heapq.heappush(self._later, (time.monotonic() + pause, next(self._order), item))

    def _settled(self, delivery_tag: int, multiple: bool) -> list[_Pending]:
        if not multiple:
            item = self._unconfirmed.pop(delivery_tag, None)
            items = [item] if item is not None else []
        else:
            items = []
            while self._unconfirmed and next(iter(self._unconfirmed)) <= delivery_tag:
                items.append(self._unconfirmed.popitem(last=False)[1])
        for item in items:
            if item.inline:  # a nacked one goes out again from this thread
                item.inline = False
                self._inline_unconfirmed -= 1
        return items

    def _forget_unconfirmed(self) -> list[_Pending]:
        """Every unconfirmed message, no longer waiting for a confirm (sent again, or failed)."""
        items = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        for item in items:
            item.inline = False
        self._inline_unconfirmed = 0
        return items

    # -- connecting and losing the connection ------------------------------------------------------------------

    def _connect(self) -> None:
        """One round over the failover URLs; if none answers, every waiting message is charged a retry."""
        conn = self._conn
        try:
            try_every_url(conn)
            raw = conn.connection
            channel = conn.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            raw.sock.settimeout(SOCKET_TIMEOUT_S)
            read_ahead(raw)
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.collect()
            self._unreachable(exc)
            return
        with self._io:
            self._raw, self._channel, self._tag = raw, channel, 0
            self._sock = raw.sock  # kept: once py-amqp has collected a closed connection, ``raw.sock`` reconnects
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._pauses = iter(RECONNECT_PAUSES_S)
        log.log(logging.INFO if self._lost_before else logging.DEBUG, "publishing on %s", conn.as_uri())

    def _unreachable(self, exc: BaseException) -> None:
        self._take_inbox()
        waiting = [item for item in self._ready if self._charge(item, exc)]
        self._ready = deque(waiting)
        pause = next(self._pauses, RECONNECT_PAUSES_S[-1])
        if self._ready or self._later:
            log.warning(
                "the publisher cannot reach the broker (%s); %d message(s) wait, again in %.1f s",
                mask_secrets(str(exc)),
                len(self._ready) + len(self._later),
                pause,
            )
        self._wait_paused(pause)

    def _wait_paused(self, pause: float) -> None:
        """Sleep ``pause`` seconds, or less if close() was called."""
        end = time.monotonic() + pause
        while self._close_by is None and (left := end - time.monotonic()) > 0:
            self._wait(left)  # callers wake it: their messages join the next round

    def _lost(self, exc: BaseException) -> None:
        """The connection (or its channel) is gone: what it had not confirmed goes out again on the next one."""
        expected = isinstance(exc, connection_errors(self._conn))  # a socket timeout is an OSError too
        in_flight = self._forget_unconfirmed()
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "the publisher lost its connection (%s); %d unconfirmed message(s) go out again",
            mask_secrets(str(exc)),
            len(in_flight),
            exc_info=not expected,
        )
        self._disconnect(clean=False)
        self._conn.maybe_switch_next()  # the unconfirmed go out again over the next failover URL
        self._lost_before = True
        again = [item for item in in_flight if self._charge(item, exc)]
        self.counts.resent += len(again)
        self._ready.extendleft(reversed(again))

    def _charge(self, item: _Pending, exc: BaseException) -> bool:
        """One more failure for ``item``: False (and ``done(exc)``) once it has had its retries."""
        item.failures += 1
        if item.failures <= self._loss_retries:
            return True
        self._fail(item, exc)
        return False

    def _disconnect(self, *, clean: bool) -> None:
        if self._channel is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._sock)
        with contextlib.suppress(Exception):
            self._conn.release() if clean else self._conn.collect()
        self._raw = self._sock = self._channel = None

    def _fail(self, item: _Pending, exc: BaseException) -> None:
        self.counts.failed += 1
        _finish(item, exc)

    def _fail_all(self, exc: BaseException) -> None:
        self._take_inbox()
        items = [*self._forget_unconfirmed(), *self._ready, *(entry[2] for entry in self._later)]
        self._ready.clear()
        self._later.clear()
        for item in items:
            self._fail(item, exc)

    def _fail_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                return
            self._fail(item, PublisherClosed("the publisher is closed"))


# -- without confirms ------------------------------------------------------------------------------------------

_LPUSHED = frozenset({"delivery_mode", "message_id", "correlation_id", "reply_to"})
# Redis: messages the publishing thread writes in one write at most
BATCH_MAX = 64


def _read_answers(sock: Any, count: int, answers: list[Any]) -> list[Any]:
    """``count`` answers of Redis read from ``sock`` into ``answers``, in order (an error answer as
    ``resp.RedisError``)."""
    buf = bytearray()
    pos = 0
    while len(answers) < count:
        try:
            answer, pos = resp.read_answer(buf, pos)
        except resp.Incomplete:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection") from None
            buf += chunk
            continue
        answers.append(answer)
    return answers


_STOP = object()


class _PlainLane:
    """The publishing thread without confirms: kombu's publish (with its retry policy), then ``done``. Redis: what
    is queued goes out as LPUSHes in one write (``_publish_redis``), kombu's publish for the rest."""

    def __init__(self, connection: Connection):
        self.counts = PublishCounts()
        self._producer = Producer(connection.clone(), auto_declare=False)
        self._inbox: SimpleQueue[Any] = SimpleQueue()
        self._stopped = False
        self._io = threading.Lock()  # held while the producer is used: by the thread, or by an inline publish
        self._count_lock = threading.Lock()
        self._queued = 0  # put and not yet published (or failed) by the thread: an inline publish waits its turn
        self._heartbeat = HEARTBEAT_S / 6 if connection.transport.driver_type == "amqp" else None
        self._redis = connection.transport.driver_type == "redis"
        self._lpushing: tuple[Any, Any] | None = None  # Redis: (pool, the connection taken from it for _lpush)
        # Redis: the delivery tags of what _lpush writes (kombu's are uuid4s): random, then a count
        self._tag_base, self._tags = str(uuid.uuid4())[:24], itertools.count()
        self._amqp = connection.transport.driver_type == "amqp"
        self._thread = threading.Thread(target=self._run, name="kvmworker-publish", daemon=True)
        self._thread.start()

    def put(self, item: _Pending) -> None:
        with self._count_lock:
            self._queued += 1
        self._inbox.put(item)
        if self._stopped:  # the thread is gone (closed): nobody else will take it
            self._fail_inbox()

    def send_inline(self, item: _Pending) -> bool:
        """Publish ``item`` on the calling thread, once, if the connection is up and nothing is queued ahead of
        it; False: it was not, or that one attempt failed (then ``put`` it: the thread retries with the policy)."""
        if item.declare or self._stopped or not self._io.acquire(timeout=INLINE_WAIT_S):
            return False
        try:
            if self._queued or self._stopped or not self._producer.connection.connected:
                return False
            try:
                if not (self._lpush(item) if self._redis else self._amqp and self._frame(item)):
                    self._producer.publish(item.body, **self._options(item), retry=False)
            except Exception as exc:
                log.debug("[%s] inline publish failed (%s); the publishing thread retries", item.msg_id, exc)
                return False
            self.counts.inline += 1
            self._published(item)
            return True
        finally:
            self._io.release()

    def close(self, timeout: float) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            stop = False
            while not stop and (item := self._next()) is not _STOP:
                if item is None:
                    continue
                batch = [item]
                if self._redis:  # what else is queued goes out in the same write
                    stop = self._take_queued(batch)
                with self._io:
                    if self._redis:
                        self._publish_redis(batch)
                    else:
                        self._publish(item)
                with self._count_lock:
                    self._queued -= len(batch)
        finally:
            self._stopped = True
            with contextlib.suppress(Exception):
                self._producer.connection.release()
            self._fail_inbox()

    def _take_queued(self, batch: list[_Pending]) -> bool:
        """Redis: what is queued behind ``batch``'s first message, up to ``BATCH_MAX`` in all; True when the
        publisher was closed behind them (they are published first)."""
        inbox = self._inbox
        while len(batch) < BATCH_MAX:
            try:
                item = inbox.get_nowait()
            except Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _next(self) -> Any:
        try:
            return self._inbox.get(timeout=self._heartbeat)
        except Empty:  # idle AMQP without confirms: keep the connection's heartbeats going
            connection = self._producer.connection
            with self._io:
                if connection.connected:
                    with contextlib.suppress(Exception):
                        connection.heartbeat_check()
            return None

    def _publish(self, item: _Pending) -> None:
        try:
            self._producer.publish(
                item.body,
                **self._options(item),
                retry=True,  # a lost connection: the same message again, over the next failover URL
                retry_policy=RETRY_POLICY,
                declare=list(item.declare),
            )
        except Exception as exc:
            self._fail(item, exc)
            return
        self._published(item)

    def _frame(self, item: _Pending) -> bool:
        """AMQP without confirms: the publish's frames written at once (``publish_frames``), as with confirms;
        False for what py-amqp frames (then kombu publishes)."""
        channel = self._producer.channel
        raw = channel.connection
        frames = publish_frames(channel.channel_id, raw.frame_max, item)
        if frames is None:
            return False
        raw.transport.write(frames)
        raw.bytes_sent += 1
        return True

    def _publish_redis(self, batch: list[_Pending]) -> None:
        """Redis: the batch's messages in order, those ``_lpush_command`` packs LPUSHed in one write (kombu's
        publish per message costs the publishing thread about twice the LPUSH); any other, and any whose LPUSH
        failed, through kombu's publish with its retry policy (a lost connection: the same message again, as
        kombu's retry does: a message whose answer was lost may be there twice; the worker's journal dedupes by
        msg_id)."""
        run: list[tuple[_Pending, bytes]] = []
        for item in batch:
            command = None
            if self._producer.connection.connected:
                try:
                    command = self._lpush_command(item)
                except Exception as exc:  # kombu's publish below meets it too, and fails the message alone
                    log.debug("[%s] not packed as an LPUSH (%s); kombu publishes it", item.msg_id, exc)
            if command is None:  # kombu's (it connects, declares, routes): after what is before it
                self._lpush_run(run)
                run = []
                self._publish(item)
            else:
                run.append((item, command))
        self._lpush_run(run)

    def _lpush_run(self, run: list[tuple[_Pending, bytes]]) -> None:
        if not run:
            return
        answers: list[Any] = []  # as they are read: those read before a failure are the broker's word
        try:
            self._lpushes([command for _, command in run], answers)
        except Exception as exc:
            log.debug("a write of %d LPUSHes failed (%s); kombu publishes the unanswered again", len(run), exc)
        if len(run) > 1:
            self.counts.batched += len(answers)
        for at, (item, _) in enumerate(run):
            if at < len(answers) and not isinstance(answers[at], resp.RedisError):
                self._published(item)
            else:  # refused, or its answer lost with the connection: kombu's publish, with its retry policy
                self._publish(item)

    def _lpush(self, item: _Pending) -> bool:
        """Redis, inline: ``_lpush_command``'s LPUSH written and its answer read; False for what kombu publishes."""
        command = self._lpush_command(item)
        if command is None:
            return False
        (answer,) = self._lpushes([command], [])
        if isinstance(answer, resp.RedisError):
            raise RuntimeError(f"Redis refused the LPUSH: {answer[:200]!r}")
        return True

    def _lpush_command(self, item: _Pending) -> bytes | None:
        """Redis, to a queue by name (the default exchange): kombu's message as kombu's Redis channel writes it,
        in one LPUSH, packed; None for anything else (an exchange, a priority, a queue that expires), which
        kombu publishes."""
        channel = self._producer.channel
        if item.exchange or not item.properties.keys() <= _LPUSHED or item.routing_key in (channel._expires or ()):
            return None
        key = ((channel.global_keyprefix or "") + channel._q_for_pri(item.routing_key, 0)).encode()
        # kombu's unacked bookkeeping is keyed by the delivery tag: kombu's are uuid4s, these look the same
        # (unique without a uuid4, a system call, per message)
        tag = f"{self._tag_base}{next(self._tags):012x}"
        try:
            message = resp.kombu_message(item.body, item.headers, item.properties, item.routing_key, tag)
        except (TypeError, ValueError):  # a header only kombu's encoder knows (a UUID, a datetime …)
            return None
        return resp.lpush(key, message)

    def _lpushes(self, commands: list[bytes], answers: list[Any]) -> list[Any]:
        """``commands`` (LPUSHes) in one write on a connection of the channel's pool kept for it (only under
        ``_io``); their answers, in order, added to ``answers`` as they are read (a refusal as
        ``resp.RedisError``): redis-py's lpush (its packer, its per-command retry and callbacks) and the pool's
        checkout and checkin per message cost several times the write and the read of its answer. A lost
        connection raises (``answers`` then holds those read before); the next write connects again."""
        conn = self._lpush_connection(self._producer.channel.client.connection_pool)
        try:
            if conn._sock is None:  # lost before: connected again, as redis-py's next command would
                conn.connect()
            sock = conn._sock
            sock.sendall(b"".join(commands))
            return _read_answers(sock, len(commands), answers)
        except BaseException:
            conn.disconnect()  # its state is unknown: the next command connects again
            raise

    def _lpush_connection(self, pool: Any) -> Any:
        """The connection ``_lpush`` writes on: taken from the channel's pool once (the pool of the moment: a
        new one after the producer connected again), given back when the pool changes; kombu's channel closes
        it with the pool's others."""
        held = self._lpushing
        if held is None or held[0] is not pool:
            if held is not None:
                with contextlib.suppress(Exception):
                    held[0].release(held[1])
            held = self._lpushing = (pool, pool.get_connection())
        return held[1]

    @staticmethod
    def _options(item: _Pending) -> dict[str, Any]:
        return {
            "exchange": item.exchange,
            "routing_key": item.routing_key,
            "content_type": JSON_CONTENT_TYPE,
            "content_encoding": "utf-8",
            "headers": item.headers,
            **item.properties,
        }

    def _published(self, item: _Pending) -> None:
        self.counts.sent += 1
        self.counts.confirmed += 1
        _finish(item, None)

    def _fail(self, item: _Pending, exc: BaseException) -> None:
        self.counts.failed += 1
        _finish(item, exc)

    def _fail_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except Empty:
                return
            if item is not _STOP:
                self._fail(item, PublisherClosed("the publisher is closed"))
