"""The worker's AMQP session (see ``transport/worker.py``): consumed on py-amqp's own channel, replies on a second
channel of the same connection, frames read and written here."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import select
import selectors
import struct
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from amqp import Message as AmqpMessage
from amqp.exceptions import MessageNacked
from amqp.serialization import dumps
from amqp.transport import TCPTransport
from kombu import Connection

from kvmworker.dispatch.deferred import begin_pass, end_pass
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.amqp_frames import (
    publish_frames,
    publish_method,
    settle_frame,
    shortstr,
    table,
)
from kvmworker.transport.amqp_reading import ACK, TAG_AND_BIT, Deliveries, cut_frames, receive, takes
from kvmworker.transport.connection import ConnectionLost
from kvmworker.transport.session import IDLE_WAIT_S, Port

if TYPE_CHECKING:
    from kvmworker.transport.worker import Worker

log = logging.getLogger("kvmworker.worker")

HEARTBEAT_TICK_S = 1.0  # busy, the heartbeats are looked at once a second at most
# A nacked reply (its queue electing a leader): again after 0.1, 0.2, 0.4 … s (at most 2 s), 12 times (~17 s).
NACK_RETRIES = 12
NACK_BACKOFF_MAX_S = 2.0
# Written (transport/amqp_frames.py): the reply's properties are content_type, content_encoding,
# application_headers, delivery_mode, correlation_id, message_id (their bits in the property flags, in the order
# the format lists them); the flags and the first two are always these.
_REPLY_FLAGS_TYPE_AND_ENCODING = struct.pack(">H", 1 << 15 | 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10 | 1 << 7) + dumps(
    "ss", (JSON_CONTENT_TYPE, "utf-8")
)
_TRANSIENT = b"\x01"  # delivery_mode


class AmqpSession:
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
        self._deliveries = Deliveries("delivery")  # a delivery whose header or body frames are still to come
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
        inbox.asleep = True  # set before the inbox is looked at: see Inbox.put
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
        if not receive(self._sock, self._rbuf):
            raise ConnectionLost("the broker closed the connection")
        on_frame, consuming, replies = raw.on_inbound_frame, self._consuming_id, self._replies_id
        deliveries = self._deliveries
        for frame in cut_frames(self._rbuf):
            frame_type, channel, payload = frame
            if channel == consuming and takes(frame_type, payload):
                # a delivery read without py-amqp's channel dispatch, promises and Message (amqp_reading.py)
                raw.bytes_recv += 1  # what py-amqp counts for the heartbeats
                if (done := deliveries.feed(frame_type, payload)) is not None:
                    tag, redelivered = done.tag_and_redelivered()
                    self._deliver(tag, redelivered, done.properties, done.body())
            elif channel == replies and frame_type == 1 and payload[:4] == ACK:
                raw.bytes_recv += 1
                tag, multiple = TAG_AND_BIT.unpack_from(payload, 4)
                self._on_ack(tag, bool(multiple & 1))
            else:  # everything else (heartbeats, nacks, the broker closing a channel …) as py-amqp reads it
                on_frame(frame)

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
            if self._deliveries.arriving is None:
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
        self._worker._receive(delivery, Port(self._worker, self, tag, props.get("message_id")))

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
