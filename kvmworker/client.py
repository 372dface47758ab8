"""The orchestrator's client: ``call(host, handler, command, data, timeout)`` → the reply.

One reply queue per client (never one per call), consumed by one background thread; replies are
matched to callers by correlation id. ``submit`` never waits for the broker: the publisher's thread
publishes, and its confirm (or its failure) arrives later. No reply in time → a ``-1`` reply carrying
the ``msg_id``, so that the caller can ask ``SystemHandler.result`` later. Thread-safe: share one client.

``call`` with no other call in flight skips both thread hops: the calling thread writes its command itself
(``Publisher.publish_async(inline=True)``; the publisher's thread still matches the confirm) and reads the
reply connection itself until its reply is in (``_Turns``). With others in flight it hands both to the threads,
which serve many callers per wake-up.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import os
import select
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from amqp.transport import TCPTransport
from kombu import Connection, Consumer, Message, Queue

from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.protocol.urls import mask_secrets
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT, host_queue_name
from kvmworker.transport import resp
from kvmworker.transport.amqp_reading import RECV_CHUNK, Deliveries, cut_frames, receive, takes
from kvmworker.transport.connection import ConnectionLost, open_connection
from kvmworker.transport.consuming import ConsumeLoop, Consuming
from kvmworker.transport.names import host_queue, reply_queue
from kvmworker.transport.publisher import FRAME_HEADER_BYTES, Publisher, read_ahead, whole_frame_buffered
from kvmworker.trust.keys import KeyFileError

if TYPE_CHECKING:
    import amqp

    from kvmworker.events.consumer import Gap
    from kvmworker.events.model import Event

log = logging.getLogger("kvmworker.client")

DEFAULT_TIMEOUT_S = 30.0


# How far a call's command got, as far as the client knows (``PendingCall.stage``).
PARKED = "parked"  # waiting for the reply consumer to be connected: not sent
SENT = "sent"  # handed to the publisher, not yet confirmed by the broker
CONFIRMED = "confirmed"  # the broker has it (or, without confirms, the publish returned)


class Answer:
    """A reply as ``call`` waits for it: what ``call`` uses of a Future (``done``, ``set_result``, ``result`` with a
    timeout) at a fraction of its cost (a Future makes a Condition, and takes it for each of these, on the
    caller's path twice per call). Set once: by whoever took the call out of the client's pending calls (under its
    lock); the waiter waits on a lock held until then."""

    __slots__ = ("_reply", "_unset")

    def __init__(self) -> None:
        self._reply: Reply | None = None
        self._unset = threading.Lock()
        self._unset.acquire()

    def done(self) -> bool:
        return self._reply is not None

    def set_result(self, reply: Reply) -> None:
        self._reply = reply
        self._unset.release()

    def result(self, timeout: float | None = None) -> Reply:
        if self._reply is None and not self._unset.acquire(timeout=-1 if timeout is None else timeout):
            raise FutureTimeout
        return self._reply  # type: ignore[return-value]


@dataclass(eq=False)
class PendingCall:
    msg_id: str
    correlation_id: str
    # resolves to a Reply: the worker's, or -1 once the publish failed for good; ``submit``'s is a Future
    future: Future | Answer
    stage: str = PARKED


@dataclass(eq=False)
class _Command:
    """A command ready to publish: signed, for one call."""

    call: PendingCall
    host: str
    body: bytes
    headers: dict[str, Any]


class Client:
    def __init__(
        self,
        broker_url: str,
        *,
        confirms: bool = True,
        persistent: bool = True,
        signer: Any = None,
        declare_host_queues: bool = True,
    ):
        """``declare_host_queues=False`` (the bridge): never create a host's queue, only publish to it."""
        self._declare_host_queues = declare_host_queues
        self._broker_url = broker_url
        self._publisher = Publisher(open_connection(broker_url, confirms=confirms))
        self._persistent = persistent
        self._signer = signer
        self._reply_queue = reply_queue()
        self._pending: dict[str, Future | Answer] = {}
        self._hosts: dict[str, str] = {}  # correlation id → the host whose key must have signed the reply
        self._parked: dict[str, _Command] = {}  # correlation id → a command waiting for the reply consumer
        self._declared: set[str] = set()
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_count = itertools.count(1)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
        consumer = _ReplyConsumer(
            self._reply_queue, self._on_reply, self._consuming, self._ready.clear, lambda: bool(self._pending)
        )
        self._replies = consumer
        replies = ConsumeLoop(open_connection(broker_url), consumer, log=log, stopping=self._closing)
        self._thread = threading.Thread(target=replies.run, name="kvmworker-replies", daemon=True)
        self._thread.start()

    # -- calling ---------------------------------------------------------------

    def call(
        self,
        host: str,
        handler: str,
        command: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        dry_run: bool = False,
        msg_id: str | None = None,
    ) -> Reply:
        envelope = Envelope(  # its msg_id made here: no copy of the envelope to add it (``_submit``)
            handler=handler,
            command=command,
            data=data or {},
            dry_run=dry_run,
            timeout=timeout,
            msg_id=new_msg_id() if msg_id is None else msg_id,
        )
        return self.wait(self._submit(host, envelope, timeout, inline=True, answer=Answer()), timeout)

    def submit(
        self, host: str, envelope: Envelope | dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> PendingCall:
        """Publish and return at once, without waiting for the broker (the bridge calls it on its event loop).

        The future resolves to the worker's reply, or to -1 once the publish failed for good (retries
        included); whichever comes first. A command submitted while the reply consumer is not connected
        waits (parked) until it is: its reply would have nowhere to go.
        """
        pending = self._submit(host, envelope, timeout, inline=False, answer=Future())
        self._replies.expecting()  # the consumer thread reads for it (it may be resting while nothing is due)
        return pending

    def _submit(
        self, host: str, envelope: Envelope | dict[str, Any], timeout: float, *, inline: bool, answer: Future | Answer
    ) -> PendingCall:
        """``inline`` (``call``, which waits right after): this thread publishes, instead of the publisher's,
        when no other call is in flight (with others, the publishing thread writes theirs and this one at once)."""
        envelope = envelope if isinstance(envelope, Envelope) else Envelope.model_validate(envelope)
        update: dict[str, Any] = {} if envelope.msg_id else {"msg_id": new_msg_id()}
        if envelope.timeout is None:
            update["timeout"] = timeout
        if update:
            envelope = envelope.model_copy(update=update)
        call = PendingCall(str(envelope.msg_id), self._correlation_id(), answer)
        try:
            command = self._sign(call, host, envelope, timeout)
        except KeyFileError as exc:
            log.error("[%s] not sent: %s", call.msg_id, exc)
            call.future.set_result(
                Reply.error(Code.UNAUTHENTICATED, f"not sent: the command could not be signed ({exc})")
            )
            return call
        with self._lock:
            self._pending[call.correlation_id] = call.future
            self._hosts[call.correlation_id] = host
            ready = self._ready.is_set()
            inline = inline and len(self._pending) == 1
            if not ready:
                self._parked[call.correlation_id] = command
        if ready:
            if inline:
                self._replies.arm()  # Redis: the reply's BRPOP ahead of the command
            self._send(command, inline=inline)
        return call

    def _correlation_id(self) -> str:
        """Unique among this client's calls (the replies to its one queue): a random prefix and a count."""
        return f"{self._id_prefix}{next(self._id_count):x}"

    def wait(self, pending: PendingCall, timeout: float) -> Reply:
        """The reply, or -1 after ``timeout``. While no other thread is reading replies for this call, this
        thread reads them itself (the consumer thread's wake-up and hand-over saved): see ``_Turns``."""
        deadline = time.monotonic() + timeout
        if not pending.future.done():
            self._replies.read_until(pending.future, deadline, alone=len(self._pending) <= 1)
        try:
            return pending.future.result(max(deadline - time.monotonic(), 0))
        except FutureTimeout:
            if not self.forget(pending.correlation_id) and pending.future.done():
                return pending.future.result()  # answered at the very last moment
            return unknown_outcome(pending.msg_id, no_reply_detail(pending, timeout))

    @property
    def signer(self) -> Any:
        """The orchestrator's signer (kvmworker.trust.signing.Signer), or None when this client does not sign."""
        return self._signer

    @property
    def ready(self) -> bool:
        """The reply consumer is connected: replies can be received."""
        return self._ready.is_set()

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    def forget(self, correlation_id: str) -> bool:
        """Stop waiting for this call's reply; False if the reply consumer has already taken it."""
        with self._lock:
            self._hosts.pop(correlation_id, None)
            self._parked.pop(correlation_id, None)
            return self._pending.pop(correlation_id, None) is not None

    def _sign(self, call: PendingCall, host: str, envelope: Envelope, timeout: float) -> _Command:
        # what ``encode(envelope.wire())`` writes, serialised by pydantic's own encoder at a fraction of the cost
        # (floats in ``data`` may spell their exponent differently: 1e-7, not 1e-07; the same JSON number)
        body = envelope.model_dump_json(exclude_none=True, exclude_defaults=True).encode()
        issued = time.time()
        headers = {HEADER_HOST: host, HEADER_ISSUED_AT: round(issued, 6), HEADER_EXPIRES_AT: round(issued + timeout, 6)}
        if self._signer is not None:
            headers.update(self._signer.sign(body, call.msg_id, host, self._reply_queue.name, headers))
        return _Command(call, host, body, headers)

    def _send(self, command: _Command, *, inline: bool = False) -> None:
        call = command.call
        call.stage = SENT
        # Straight to the host's queue through the default exchange: the same queue the ``kvmworker``
        # exchange routes ``host`` to, without a routing lookup per message (a Redis round trip each).
        self._publisher.publish_async(
            command.body,
            routing_key=host_queue_name(command.host),
            declare=self._declare_once(command.host),
            persistent=self._persistent,
            headers=command.headers,
            message_id=call.msg_id,
            correlation_id=call.correlation_id,
            reply_to=self._reply_queue.name,
            done=partial(self._published, command),
            inline=inline,
        )

    def _published(self, command: _Command, exc: BaseException | None) -> None:
        """From the publishing thread: the broker has the command, or the publisher gave up on it."""
        call = command.call
        if exc is None:
            call.stage = CONFIRMED
            return
        with self._lock:
            self._declared.discard(command.host)
        detail = mask_secrets(str(exc))
        if self.forget(call.correlation_id):
            log.warning("[%s] publish failed: %s", call.msg_id, detail)
            call.future.set_result(
                unknown_outcome(
                    call.msg_id,
                    f"the broker did not confirm the command ({detail}): it may or may not"
                    " have reached the worker; SystemHandler.result with this msg_id tells",
                )
            )
        else:
            # The broker took the message before the connection broke (the confirm was what got
            # lost), and the worker's reply already arrived: that reply is the true answer.
            log.info("[%s] publish reported %s, but the call was already answered", call.msg_id, detail)

    def _declare_once(self, host: str) -> tuple[Queue, ...]:
        """The host's queue is declared with the first command to it, so that it waits for a late worker."""
        with self._lock:
            if host in self._declared or not self._declare_host_queues:
                return ()
            self._declared.add(host)
        return (host_queue(host),)

    # -- the reply consumer (its thread) ---------------------------------------

    def _consuming(self) -> None:
        """The reply consumer is up: commands parked while it was not are sent now."""
        with self._lock:
            self._ready.set()
            parked, self._parked = list(self._parked.values()), {}
        for command in parked:
            self._send(command)

    def _on_reply(self, message: Message | amqp.Message) -> None:
        """A reply from the reply queue: kombu's message (Redis, memory) or py-amqp's (AMQP); the same fields."""
        correlation_id = message.properties.get("correlation_id")
        host = self._hosts.get(correlation_id)
        if host is None:
            log.info("reply for an unknown or timed-out call (%s) dropped", correlation_id)
            return
        if self._signer is not None and not self._signer.reply_is_authentic(
            message.body, correlation_id, message.properties.get("message_id"), message.headers or {}, host
        ):
            log.warning(
                "reply for %s dropped: its signature does not verify with the keys of the host the command went to"
                " (forged, or that host's key is not enrolled)",
                correlation_id,
            )
            return
        with self._lock:
            self._hosts.pop(correlation_id, None)
            future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            log.info("reply for an unknown or timed-out call (%s) dropped", correlation_id)
            return
        try:
            future.set_result(Reply.model_validate_json(message.body))
        except Exception as exc:
            future.set_result(Reply.error(Code.INTERNAL_ERROR, f"the worker's reply could not be read: {exc}"))

    # -- events (§7) -----------------------------------------------------------

    def events(
        self,
        host: str | None = None,
        source: str | None = None,
        *,
        queue: str | None = None,
        idle_timeout: float | None = None,
        ready: threading.Event | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Event | Gap]:
        """Follow the events of ``host`` (any) from ``source`` (any), in order, each once; a ``Gap`` comes
        before the event that shows some were missed. ``queue``: a durable queue of that name, which keeps
        collecting while nobody follows (else a private one, from the moment it is bound: ``ready`` is set
        then). It ends when ``stop`` is set or after ``idle_timeout`` seconds without an event. With a signer,
        only events the host's key signed. See kvmworker.events.consumer."""
        from kvmworker.events.consumer import follow

        return follow(
            self._broker_url,
            host,
            source,
            queue=queue,
            signer=self._signer,
            idle_timeout=idle_timeout,
            ready=ready,
            stop=stop,
        )

    def close(self) -> None:
        self._closing.set()
        self._replies.wake()  # a resting consumer thread sees it now, not at its next pass (0.2 s later)
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._replies.close()
        self._publisher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Turns:
    """Who reads the reply connection: the consumer thread, or one caller waiting for its own reply.

    A caller waiting for its reply while no other caller reads (``lead``) reads the connection itself until
    its reply is in, handing the other replies it reads to their futures: no wake-up of the consumer thread
    and no hand-over from it per call. The consumer thread reads whenever no caller does and a reply is
    expected (the bridge's, a waiting caller's); while none is, it rests and reads once per ``drain_timeout``
    (stray replies, heartbeats, a lost connection), so that the next caller takes the connection without
    having to wake it. A caller with others in flight leaves the reading to the consumer thread (one wake-up of
    it serves many replies).
    """

    def __init__(self, wake: Callable[[], None], expected: Callable[[], bool]):
        self._cond = threading.Condition(threading.Lock())
        self._wake, self._expected = wake, expected
        self.live = False  # a consumer is up: there is a connection to read
        self.failure: BaseException | None = None  # what a caller's read ran into: the connection is lost
        self._leader = False  # a caller reads
        self._thread = False  # the consumer thread reads
        self._wanted = 0  # callers waiting for the consumer thread to let go
        self._resting = False

    # -- callers -------------------------------------------------------------------------------------------

    def lead(self, alone: bool) -> bool:
        """Take the connection (True), or leave the reading to the consumer thread (False). ``alone``: no other
        call is in flight."""
        with self._cond:
            if not alone or not self.live or self._leader:
                if self._resting:
                    self._cond.notify_all()  # this caller's reply is expected: a resting consumer thread reads
                return False
            self._wanted += 1
            try:
                if self._thread:
                    self._wake()  # out of its wait on the socket; it lets go at once
                    end = time.monotonic() + LEAD_SLICE_S  # else (stuck on a broken socket?) it reads for us
                    while self._thread and self.live and (left := end - time.monotonic()) > 0:
                        self._cond.wait(left)
                if self._thread or not self.live or self._leader:
                    self._cond.notify_all()  # a resting consumer thread reads for this caller after all
                    return False
                self._leader = True
                return True
            finally:
                self._wanted -= 1

    def step_down(self, failure: BaseException | None) -> None:
        with self._cond:
            self._leader = False
            if failure is not None and self.failure is None:
                self.failure = failure
            if failure is not None or not self.live or self._wanted or self._expected():
                self._cond.notify_all()  # the consumer thread reads on (or learns of the loss)

    def expecting(self) -> None:
        """A reply is now expected that no caller will read: a resting consumer thread reads from now on."""
        with self._cond:
            if self._resting:
                self._cond.notify_all()

    def wake(self) -> None:
        """The consumer thread out of its rest and its wait on the socket (the client closes)."""
        with self._cond:
            self._cond.notify_all()
        self._wake()

    # -- the consumer thread -------------------------------------------------------------------------------

    def take(self, timeout: float) -> bool:
        """Hold the connection for one pass; False if a caller has it (or wants it) after ``timeout``."""
        with self._cond:
            if self._leader or self._wanted or not self._expected():
                self._resting = True
                try:
                    self._cond.wait(timeout)
                finally:
                    self._resting = False
                if self._leader or self._wanted:
                    return False
            self._thread = True
            return True

    def give_back(self) -> None:
        with self._cond:
            self._thread = False
            if self._wanted:
                self._cond.notify_all()

    def expected(self) -> bool:
        return self._expected()

    def open(self) -> None:
        with self._cond:
            self.live, self.failure = True, None

    def close(self) -> None:
        """No caller reads from now on: once the one reading (if any) has let go, the connection is the
        consumer thread's alone (to cancel, or to give up)."""
        with self._cond:
            self.live = False
            self._cond.notify_all()
            while self._leader:
                self._cond.wait()


POLLED_PASS_S = 0.02  # memory://: one pass of the consumer thread
LEAD_SLICE_S = 0.1  # a caller reading checks this often whether the consumer thread needs the connection back


class _ReplyConsumer(Consuming):
    """A client's reply queue on ``ConsumeLoop``; its callers may read the connection themselves (``_Turns``)."""

    what = "reply consumer"

    def __init__(
        self,
        queue: Queue,
        on_reply: Callable[[Message], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        expected: Callable[[], bool],
    ):
        self._queue, self._on_reply, self._on_up, self._on_down = queue, on_reply, on_up, on_down
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._turns = _Turns(self._wake, expected)

    _reader: _AmqpReplies | _RedisReplies | None = None  # None: kombu's consumer (memory://), no caller reads

    def start(self, conn: Connection, channel: Any) -> Consumer | _RawConsumer | _RedisReplies:
        self._reader = None
        driver = conn.transport.driver_type
        if driver == "amqp":
            return self._start_raw(conn, channel)
        if driver == "redis":
            self._queue.bind(channel).declare()
            self._reader = _RedisReplies(channel, self._queue, self._on_reply, self._stop_reading)
            return self._reader
        consumer = Consumer(channel, queues=[self._queue], on_message=self._on_reply, no_ack=True)
        consumer.consume()
        return consumer

    def drain_timeout(self) -> float:
        # kombu's consumer (memory://) polls every 2 ms inside a drain anyway and cannot be woken: a short pass
        # costs nothing more, and a closing client's thread ends within it
        return POLLED_PASS_S if self._reader is None else super().drain_timeout()

    def drain(self, conn: Connection, raw: Any) -> None:
        reader, turns = self._reader, self._turns
        if reader is None:
            super().drain(conn, raw)
            return
        if not turns.take(self.drain_timeout()):
            return
        try:
            if turns.failure is not None:
                raise ConnectionLost(f"the reply connection was lost ({turns.failure})") from turns.failure
            reader.read(self.drain_timeout() if turns.expected() else 0, self._wake_r)
            reader.check()
        finally:
            turns.give_back()

    def read_until(self, future: Future | Answer, deadline: float, *, alone: bool) -> None:
        """On a caller's thread: read replies until ``future`` has its own, ``deadline``, or the consumer
        thread needs the connection back; at once if another thread reads (then it reads for this caller)."""
        reader, turns = self._reader, self._turns
        if reader is None or not turns.lead(alone):
            return
        failure = None
        try:
            while not future.done() and turns.live and (left := deadline - time.monotonic()) > 0:
                reader.read(min(left, LEAD_SLICE_S), None)
            reader.check()
        except Exception as exc:  # the connection is lost: the consumer thread connects again
            failure = exc
        finally:
            turns.step_down(failure)

    def expecting(self) -> None:
        self._turns.expecting()

    def arm(self) -> None:
        """A caller about to publish alone: Redis's reader sends its wait for the reply now (``_RedisReplies.arm``)."""
        reader = self._reader
        if isinstance(reader, _RedisReplies):
            reader.arm()

    def wake(self) -> None:
        self._turns.wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes it just the same
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """The loop's thread has ended: its wake-up pipe goes."""
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _start_raw(self, conn: Connection, channel: Any) -> _RawConsumer:
        """AMQP: py-amqp's own consumer, its messages handed over as they are (kombu would wrap each reply in a
        message object of its own, decoded and checked for what a reply never uses)."""
        raw = conn.connection
        read_ahead(raw)
        self._queue.bind(channel).declare()
        tag = channel.basic_consume(self._queue.name, no_ack=True, callback=self._on_reply)
        self._reader = _AmqpReplies(conn, raw, channel.channel_id, self._on_reply, self.drain_timeout())
        return _RawConsumer(channel, tag, self._stop_reading)

    def up(self, conn: Connection, again: bool) -> None:
        log.log(logging.INFO if again else logging.DEBUG, "reply consumer on %s", conn.as_uri())
        self._turns.open()
        self._on_up()

    def down(self) -> None:
        self._stop_reading()
        self._on_down()

    def _stop_reading(self) -> None:
        """No caller reads from now on (the consumer is cancelled, or its connection is gone)."""
        self._turns.close()
        if self._reader is not None:
            self._reader.stop()


class _Readable:
    """Waits up to a timeout for a socket (or a wake-up pipe, which is then emptied); True if the socket is
    readable. One poll object per wake-up pipe watched with the socket, made once."""

    def __init__(self, fd: int):
        self._fd = fd
        self._polls: dict[int | None, Any] = {}

    def __call__(self, wake_fd: int | None, timeout: float) -> bool:
        poller = self._polls.get(wake_fd)
        if poller is None:
            poller = self._polls[wake_fd] = select.poll()
            poller.register(self._fd, select.POLLIN)
            if wake_fd is not None:
                poller.register(wake_fd, select.POLLIN)
        readable = False
        for ready, _ in poller.poll(timeout * 1000):
            if ready == wake_fd:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_fd, 4096)
            else:
                readable = True
        return readable


class _AmqpReplies:
    """AMQP: the reply connection's socket, read by whoever holds the turn.

    Plain TCP: the socket is read in chunks without blocking (``MSG_DONTWAIT``) and its whole frames cut out
    here; a reply's frames (basic.deliver, its content header, its body) are assembled here and its properties
    decoded as py-amqp decodes them (transport/amqp_properties.py), without py-amqp's frame handler, channel
    dispatch and Message (they cost a caller more than the rest of its reply's path). Every other frame
    (heartbeats, a channel or connection closing, a cancel) goes to py-amqp as it reads it. ``stop`` hands
    back to py-amqp what it has read and not yet used (a reply's first frames too), before py-amqp reads the
    socket itself again (the cancel, the close). TLS: py-amqp reads, the socket non-blocking while consuming.
    """

    def __init__(self, conn: Connection, raw: Any, channel_id: int, on_reply: Callable[[Any], None], timeout: float):
        self._conn, self._raw, self._timeout = conn, raw, timeout
        self._channel_id, self._on_reply = channel_id, on_reply
        self._transport = raw.transport  # connected now: consuming on it has just begun
        self._sock = self._transport.sock
        self._plain = isinstance(self._transport, TCPTransport)
        if self._plain:  # blocking, each wait bounded by the system: see ``_receive_waiting``
            self._sock.settimeout(None)
            _system_timeouts(self._sock, LEAD_SLICE_S, SEND_TIMEOUT_S)
        else:
            self._sock.settimeout(0)
        self._rbuf = bytearray()
        self._deliveries = Deliveries("reply")
        self._stopped = False
        self._readable = _Readable(self._sock.fileno())
        self._next_check = 0.0
        if self._plain:  # what py-amqp read ahead (while it waited for consume-ok) is read here from now on
            transport = self._transport
            self._rbuf += transport._read_buffer
            transport._read_buffer = b""

    def read(self, timeout: float, wake_fd: int | None) -> None:
        if self._stopped:
            return
        if not self._plain:
            self._read_tls(timeout, wake_fd)
            return
        if self._whole_frame():
            alive = receive(self._sock, self._rbuf)
        elif wake_fd is None and timeout >= LEAD_SLICE_S:
            alive = self._receive_waiting()
            if alive is None:
                return
        elif self._readable(wake_fd, timeout):
            alive = receive(self._sock, self._rbuf)
        else:
            return
        if not alive:
            raise ConnectionLost("the broker closed the reply connection")
        channel_id, on_frame, deliveries = self._channel_id, self._raw.on_inbound_frame, self._deliveries
        for frame in cut_frames(self._rbuf):
            frame_type, channel, payload = frame
            if channel == channel_id and takes(frame_type, payload):
                self._raw.bytes_recv += 1  # as py-amqp counts a frame read: the heartbeats see the connection busy
                if (reply := deliveries.feed(frame_type, payload)) is not None:
                    self._on_reply(_AmqpReply(reply.body(), reply.properties))
            else:  # heartbeats, the broker closing the channel or cancelling the consumer …: as py-amqp reads them
                on_frame(frame)

    def _receive_waiting(self) -> bool | None:
        """A caller's read of a whole slice (``LEAD_SLICE_S``): one ``recv`` that waits for the socket itself, up
        to the socket's receive timeout (the slice), instead of a ``poll`` and then a ``recv`` (one system call
        per reply, and one letting go of the GIL, saved). None: nothing came within the slice; False: the broker
        closed the connection. (The consumer thread waits with its wake-up pipe: ``_Readable``.)"""
        try:
            chunk = self._sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):  # the receive timeout: nothing within the slice
            return None
        if not chunk:
            return False
        self._rbuf += chunk
        return len(chunk) < RECV_CHUNK or receive(self._sock, self._rbuf)

    def _whole_frame(self) -> bool:
        buf = self._rbuf
        return len(buf) > FRAME_HEADER_BYTES and len(buf) > FRAME_HEADER_BYTES + int.from_bytes(buf[3:7], "big")

    def _read_tls(self, timeout: float, wake_fd: int | None) -> None:
        raw = self._raw
        if not whole_frame_buffered(raw) and not self._readable(wake_fd, timeout):
            return
        try:
            raw.drain_events(timeout=0)  # what one receive brought (read_ahead): every whole frame
            while whole_frame_buffered(raw):
                raw.drain_events(timeout=0)
        except TimeoutError:  # nothing more on the socket: the next pass waits for it
            return

    CHECK_EVERY_S = 0.5  # the heartbeats are due every 15 s (HEARTBEAT_S / rate): a caller's call need not look

    def check(self) -> None:
        """The connection is still there; heartbeats go out when due. (A connection the broker closed is seen at
        once by the next read.)"""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.CHECK_EVERY_S
        conn, raw = self._conn, self._raw
        if not conn.transport.verify_connection(raw):
            raise ConnectionLost(f"the connection to {conn.as_uri()} was lost")
        conn.transport.heartbeat_check(raw, rate=2)

    def stop(self) -> None:
        """py-amqp reads the socket from now on: what was read here and not used is its, a reply's frames
        begun too (framed again as they came), and the socket blocks again (with its timeout)."""
        if not self._stopped and self._plain:
            self._stopped = True
            arriving, self._deliveries.arriving = self._deliveries.arriving, None
            unused = arriving.frames(self._channel_id) if arriving is not None else b""
            # A lost connection has nobody left to read it. Never ``self._raw.transport`` then: py-amqp answers
            # it by connecting again, inside this stop (a stray connection, or a stop that waits for a broker).
            if self._raw.connected:
                transport = self._transport
                transport._read_buffer = unused + bytes(self._rbuf) + transport._read_buffer
            self._rbuf.clear()
        self._stopped = True
        with contextlib.suppress(OSError):
            if self._plain:  # py-amqp's own waits are Python's (poll): no system timeouts under them
                _system_timeouts(self._sock, 0, 0)
            self._sock.settimeout(self._timeout)


SEND_TIMEOUT_S = 10.0  # the reply connection's writes (heartbeats, the cancel) wait this long for the socket at most


def _system_timeouts(sock: Any, receive_s: float, send_s: float) -> None:
    """A blocking socket's receive and send timeouts, kept by the system (0: none): a ``recv`` that waits longer
    fails with ``BlockingIOError``."""
    for option, seconds in ((socket.SO_RCVTIMEO, receive_s), (socket.SO_SNDTIMEO, send_s)):
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000)))


_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds


class _AmqpReply:
    """A reply as ``Client._on_reply`` reads it: what py-amqp's message would have given, and nothing else."""

    __slots__ = ("body", "properties")

    def __init__(self, body: bytes, properties: dict[str, Any]):
        self.body, self.properties = body, properties

    @property
    def headers(self) -> dict[str, Any] | None:
        return self.properties.get("application_headers")


class _RedisReply:
    """A reply as ``Client._on_reply`` reads it: what kombu's message would have given, and nothing else."""

    __slots__ = ("body", "headers", "properties")

    def __init__(self, body: bytes, headers: dict[str, Any], properties: dict[str, Any]):
        self.body, self.headers, self.properties = body, headers, properties


class _RedisReplies:
    """Redis: the reply queue read with BRPOP on a connection of its own, its messages decoded as kombu's
    Redis channel decodes them (kombu's poller, its per-message objects and its per-command client cost more
    than the rest of a client's reply path). The replies are not acked (``no_ack``, as before): nothing to
    record. The queue is declared by kombu, as for kombu's consumer. Read by whoever holds the turn: the
    socket itself (redis-py set it up), its answers cut out here (redis-py's parser costs a reply more than
    the rest of its read). The consumer thread (reading for many callers) sends an ``RPOP`` of up to
    ``AT_ONCE`` replies in front of its BRPOP (Redis >= 6.2): every reply waiting comes in one round trip."""

    BRPOP_TIMEOUT_S = 1  # Redis answers an idle BRPOP this often: a dead connection is noticed within it
    AT_ONCE = 64  # replies one RPOP takes at most

    def __init__(self, channel: Any, queue: Queue, on_reply: Callable[[Any], None], stop: Callable[[], None]):
        self._on_reply, self._stop = on_reply, stop
        prefix = channel.global_keyprefix or ""
        keys = [prefix + channel._q_for_pri(queue.name, pri) for pri in channel.priority_steps]  # kombu's keys
        self._brpop = resp.pack([("BRPOP", *keys, self.BRPOP_TIMEOUT_S)])
        # the default priority's list (the worker's replies go there), then the wait, in one write
        self._rpop_brpop = resp.pack([("RPOP", keys[0], self.AT_ONCE)]) + self._brpop
        self._batches = True  # until Redis refuses RPOP's count (Redis < 6.2)
        self._pool = channel.pool
        self._conn = self._pool.get_connection()  # connected, authenticated, its database selected
        self._sock = self._conn._sock  # from here on written and read here alone
        self._tls = hasattr(self._sock, "pending")
        if not self._tls:  # blocking, each wait bounded by the system: see ``read``
            self._sock.settimeout(None)
            _system_timeouts(self._sock, LEAD_SLICE_S, SEND_TIMEOUT_S)
        self._readable = _Readable(self._sock.fileno())
        self._buf = bytearray()  # what was read of the answers owed
        self._owed: deque[bool] = deque()  # the answers Redis owes, in order: True for a BRPOP's, False an RPOP's
        self._sending = threading.Lock()  # a wait sent by the reader, or by a caller about to publish (``arm``)
        self._sent_at = 0.0
        # a live Redis answers a BRPOP within its timeout: one unanswered this much longer is a dead connection
        # (a half-open socket never becomes readable), as kombu's poller judges it
        self._overdue_s = self.BRPOP_TIMEOUT_S + (channel.health_check_interval or 25)

    def read(self, timeout: float, wake_fd: int | None) -> None:
        sock = self._sock
        if not self._owed:
            with self._sending:
                try:
                    self._send_wait(batch=wake_fd is not None)  # the consumer thread's: it reads for many
                except OSError as exc:
                    raise self._lost(f"writing to Redis failed: {exc}") from exc
        # a caller's read of a whole slice: one ``recv`` that waits up to the socket's receive timeout (the slice),
        # instead of a ``poll`` and then a ``recv`` (as ``_AmqpReplies._receive_waiting``); the consumer thread
        # waits with its wake-up pipe
        waits = wake_fd is None and timeout >= LEAD_SLICE_S and not self._tls
        if not waits and not (self._tls and sock.pending()) and not self._readable(wake_fd, timeout):
            return
        try:
            chunk = sock.recv(RECV_CHUNK) if waits or self._tls else sock.recv(RECV_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):  # the receive timeout: nothing within the slice
            return
        except OSError as exc:
            raise self._lost(f"reading from Redis failed: {exc}") from exc
        if not chunk:
            raise self._lost("Redis closed the connection")
        buf = self._buf
        buf += chunk
        pos = 0
        came: list[bytes] = []
        try:
            while self._owed:
                answer, pos = resp.read_answer(buf, pos)
                with self._sending:
                    waited = self._owed.popleft()
                if waited:  # the BRPOP's: [key, message], or nothing (timed out)
                    if isinstance(answer, bytes):  # an error
                        raise self._lost(f"Redis answered a BRPOP with {answer[:200]!r}")
                    if answer:
                        came.append(answer[1])
                elif isinstance(answer, resp.RedisError):  # RPOP with a count: Redis >= 6.2
                    log.info("Redis takes replies one at a time (%s)", answer[:200].decode(errors="replace"))
                    self._batches = False
                else:
                    came += answer or ()
        except resp.Incomplete:
            pass  # the rest comes: the next read waits for it
        del buf[:pos]
        if buf and not self._owed:
            raise self._lost(f"Redis answered what was not asked: {bytes(buf[:200])!r}")
        for message in came:  # read off the connection, whatever becomes of each
            self._deliver(message)

    def _send_wait(self, batch: bool = False) -> None:
        """The BRPOP (``batch``: an RPOP of what is waiting in front of it), unless a wait is out (``_sending``
        held)."""
        if not self._owed:
            if batch and self._batches:
                self._sock.sendall(self._rpop_brpop)  # packed once
                self._owed += (False, True)
            else:
                self._sock.sendall(self._brpop)
                self._owed.append(True)
            self._sent_at = time.monotonic()

    def arm(self) -> None:
        """From a caller about to publish its command alone, whether or not it will read the reply itself: the
        BRPOP goes out now, ahead of the command, so that Redis hands the reply over the moment it lands. Sent
        when the caller reads, it would cost a round trip more whenever the worker answers before the caller
        has had the CPU back from its publish (two cores shared by the caller, Redis and the worker: often).
        Whoever reads reads its answer. Not over TLS (one SSL object written by one thread and read by another
        at once is not safe); a failure is left to the reader, which finds the connection lost."""
        if self._owed or self._tls:
            return
        with self._sending, contextlib.suppress(OSError):
            self._send_wait()

    def check(self) -> None:
        if self._owed and time.monotonic() - self._sent_at > self._overdue_s:
            raise self._lost(f"Redis did not answer a BRPOP within {self._overdue_s:g} s")

    def _lost(self, why: str) -> ConnectionLost:
        """The connection is out of step (or gone): redis-py connects it again should it be used again."""
        self._conn.disconnect()
        self._buf.clear()
        self._owed.clear()
        return ConnectionLost(why)

    def _deliver(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            properties = message.get("properties") or {}
            body = message.get("body") or ""
            if properties.get("body_encoding") == "base64":
                data = base64.b64decode(body)
            else:
                data = body.encode() if isinstance(body, str) else bytes(body)
            headers = message.get("headers") or {}
        except Exception as exc:  # its caller (if any) gets -1 at its timeout, as for a reply that never came
            log.warning("a reply that is not kombu's message was dropped (%s): %r", exc, payload[:200])
            return
        self._on_reply(_RedisReply(data, headers, properties))

    def stop(self) -> None:
        """No caller reads any more (the consumer is going down): nothing to restore."""

    def cancel(self) -> None:
        self._stop()
        self._conn.disconnect()  # an unanswered BRPOP may be on it
        self._pool.release(self._conn)


class RandomIds:
    """Version-4 UUIDs from ``os.urandom`` fetched 1,024 at a time: ``uuid.uuid4()`` makes one system call per
    id, during which the GIL goes to whichever thread wants it (the bridge's event loop then waits to get it
    back). Thread-safe without a lock: each pool hands out each of its slices once (``itertools.count``)."""

    BATCH = 1024

    def __init__(self) -> None:
        self._state = (os.urandom(16 * self.BATCH), itertools.count())

    def __call__(self) -> uuid.UUID:
        while True:
            pool, taken = self._state
            index = next(taken)
            if index < self.BATCH:
                return uuid.UUID(bytes=pool[16 * index : 16 * index + 16], version=4)
            self._state = (os.urandom(16 * self.BATCH), itertools.count())


new_msg_id = RandomIds()


class _RawConsumer:
    """What ``ConsumeLoop`` cancels when it stops: a py-amqp consumer by its tag, once no caller reads."""

    def __init__(self, channel: Any, tag: str, stop_reading: Callable[[], None]):
        self._channel, self._tag, self._stop_reading = channel, tag, stop_reading

    def cancel(self) -> None:
        self._stop_reading()
        self._channel.basic_cancel(self._tag)


def no_reply_detail(pending: PendingCall, timeout: float, host: str | None = None) -> str:
    """Why a call has no reply after ``timeout`` seconds, as far as the client knows."""
    if pending.stage == PARKED:
        return f"the broker could not be reached within {timeout:g} s: the command was not sent"
    if pending.stage == SENT:
        return (
            f"the broker did not confirm the command within {timeout:g} s: it may or may not have reached the"
            " worker; SystemHandler.result with this msg_id tells"
        )
    return f"no reply from host {host!r} within {timeout:g} s" if host else f"no reply within {timeout:g} s"


def unknown_outcome(msg_id: str, detail: str) -> Reply:
    """-1: the command may or may not have run; ``SystemHandler.result`` tells later."""
    return Reply.error(Code.UNKNOWN_OUTCOME, detail, msg_id=msg_id)
