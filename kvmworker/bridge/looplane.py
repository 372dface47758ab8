"""The bridge's commands and their replies on its own event loop, over one AMQP connection: no thread hops.

Through ``Client`` a request costs two hand-overs between threads (the publisher's thread publishes, the reply
consumer's thread resolves a future that the loop is told about), each a wake-up and a fight for the GIL with
the event loop. Here the loop writes the command's frames itself and reads the broker's frames as they come
(``asyncio.Protocol``): the confirm, then the reply, which resolves the request's own loop future.

The connection is opened by py-amqp in a thread of the loop's executor (failover URLs, login, tuning, the
channel in confirm mode, the reply queue declared and consumed, as the client does), then its socket is handed
to the loop; from there on a reply's properties are decoded as py-amqp's ``decode_properties_basic`` decodes them
(transport/amqp_properties.py), and a command's frames out are what py-amqp's ``frame_writer`` writes
(``PublishFrames``, transport/amqp_frames.py).

The client's guarantees, the same way (``transport/publisher.py``, ``client.py``):

- a command is published only while the reply queue is consumed (else it waits, ``PARKED``, till its deadline);
- with publisher confirms: a ``basic.nack`` sends the command again after a pause that doubles, up to
  ``NACK_RETRIES`` times; a lost connection sends every unconfirmed command again over the next failover URL
  (at least once: the worker's journal dedupes by msg_id), up to ``LOSS_RETRIES`` losses or failed rounds of
  reconnecting per command; after that the caller gets -1 at once;
- a reply is taken only from the host the command went to when the bridge signs (``reply_is_authentic``);
- heartbeats both ways: a broker silent for two heartbeats is a lost connection.

Only for plain ``amqp://`` (``usable``): TLS and the other brokers go through ``Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from struct import pack, unpack_from
from typing import Any

from amqp import spec
from amqp.serialization import dumps
from kombu import Connection

from kvmworker.client import CONFIRMED, PARKED, SENT, new_msg_id, unknown_outcome
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.protocol.urls import mask_secrets
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT, host_queue_name
from kvmworker.transport.amqp_frames import (
    FRAME_END,
    FRAME_HEADER,
    method_frame,
    publish_frames,
    publish_method,
    shortstr,
    table,
)
from kvmworker.transport.amqp_properties import decode_properties
from kvmworker.transport.connection import open_connection, try_every_url
from kvmworker.transport.names import reply_queue
from kvmworker.transport.publisher import LOSS_RETRIES, NACK_BACKOFF_MAX_S, NACK_RETRIES, RECONNECT_PAUSES_S
from kvmworker.trust.keys import KeyFileError

log = logging.getLogger("kvmworker.bridge")

# AMQP 0-9-1 methods this lane reads or writes, as (class, method)
BASIC_PUBLISH = spec.Basic.Publish
BASIC_DELIVER = spec.Basic.Deliver
BASIC_CANCEL = spec.Basic.Cancel
BASIC_ACK = spec.Basic.Ack
BASIC_NACK = spec.Basic.Nack
CHANNEL_CLOSE = spec.Channel.Close
CHANNEL_CLOSE_OK = spec.Channel.CloseOk
CONNECTION_CLOSE = spec.Connection.Close
CONNECTION_CLOSE_OK = spec.Connection.CloseOk
CONNECTION_BLOCKED = spec.Connection.Blocked
CONNECTION_UNBLOCKED = spec.Connection.Unblocked
METHOD_ARGS = 4  # a method frame's arguments follow its class and method ids
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class PublishFrames:
    """A command's ``basic.publish``, content header and body frames, byte for byte what py-amqp's ``frame_writer``
    writes for ``Message(body, content_type, content_encoding, application_headers, delivery_mode,
    correlation_id, reply_to, message_id)`` (transport/amqp_frames.py), without its generic property walk: the
    properties every command shares are encoded once, the method frame once per host."""

    FLAGS = 0xF680  # content_type, content_encoding, headers, delivery_mode, correlation_id, reply_to, message_id
    HOSTS_KEPT = 1024

    def __init__(self, channel: int, frame_max: int, reply_to: str, delivery_mode: int):
        self._channel = channel
        self._frame_max = frame_max
        self._shared = pack(">H", self.FLAGS) + shortstr(JSON_CONTENT_TYPE) + shortstr("utf-8")
        self._mode = bytes((delivery_mode,))
        self._reply_to = shortstr(reply_to)
        self._methods: dict[str, bytes] = {}

    def frames(self, routing_key: str, body: bytes, headers: dict[str, Any], correlation_id: str, msg_id: str) -> bytes:
        method = self._methods.get(routing_key)
        if method is None:
            if len(self._methods) >= self.HOSTS_KEPT:
                self._methods.clear()
            method = self._methods[routing_key] = publish_method(self._channel, "", routing_key)
        properties = b"".join(
            (self._shared, table(headers), self._mode, shortstr(correlation_id), self._reply_to, shortstr(msg_id))
        )
        return publish_frames(self._channel, self._frame_max, method, properties, body)


class LaneLost(ConnectionError):
    """The lane's connection went: closed by the broker, by the network, or silent for two heartbeats."""


def usable(broker_url: str) -> bool:
    """Plain AMQP on every failover URL: the lane can take the socket over (TLS cannot be handed to the loop)."""
    conn = Connection(broker_url)
    urls = conn.alt or [broker_url]
    schemes = {str(url).split("://", 1)[0].lower() for url in urls}
    return schemes <= {"amqp", "pyamqp"} and not conn.ssl


@dataclass(eq=False)
class LaneCall:
    """One request's command: what ``no_reply_detail`` reads (``stage``) and the loop future of its reply."""

    msg_id: str
    correlation_id: str
    host: str
    body: bytes
    headers: dict[str, Any]
    future: asyncio.Future  # a Reply, or None once the deadline passed or the bridge drains
    stage: str = PARKED
    nacks: int = 0
    failures: int = 0
    retry: asyncio.TimerHandle | None = field(default=None, repr=False)


class LoopLane:
    """Commands and replies over one AMQP connection owned by the running event loop. Loop thread only,
    except ``close`` when the loop has already stopped."""

    def __init__(self, broker_url: str, signer: Any = None, *, persistent: bool = True):
        self._conn = open_connection(broker_url, confirms=False)  # confirm mode is selected here, per channel
        self._signer = signer
        self.delivery_mode = 2 if persistent else 1
        self.reply_queue = reply_queue().name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, LaneCall] = {}  # correlation id → a call waiting for its reply
        self._parked: deque[LaneCall] = deque()  # to publish once connected
        self._unconfirmed: OrderedDict[int, LaneCall] = OrderedDict()  # by delivery tag, in the order sent
        self._tag = 0
        self._protocol: _AmqpProtocol | None = None
        self._keeper: asyncio.Task | None = None
        self._lost_before = False
        self._closed = False
        self._id_count = iter(range(1, 1 << 62))
        self._id_prefix = new_msg_id().hex[:20]

    # -- requests ------------------------------------------------------------------------------------------------

    def submit(self, host: str, envelope: Envelope, timeout: float) -> LaneCall:
        """Publish now if connected, else when connected; the call's future resolves to the reply."""
        loop = asyncio.get_running_loop()
        self._start(loop)
        correlation_id = f"{self._id_prefix}{next(self._id_count):x}"
        call = LaneCall(str(envelope.msg_id), correlation_id, host, b"", {}, loop.create_future())
        try:
            self._sign(call, envelope, timeout)
        except KeyFileError as exc:
            log.error("[%s] not sent: %s", call.msg_id, exc)
            reply = Reply.error(Code.UNAUTHENTICATED, f"not sent: the command could not be signed ({exc})")
            call.future.set_result(reply)
            return call
        self._pending[correlation_id] = call
        if self._protocol is not None:
            self._send(call)
        else:
            self._parked.append(call)
        return call

    def forget(self, call: LaneCall) -> None:
        """The caller stopped waiting: its reply, if it comes, is dropped; a nacked command is not sent again."""
        self._pending.pop(call.correlation_id, None)
        if call.retry is not None:
            call.retry.cancel()
        with contextlib.suppress(ValueError):
            self._parked.remove(call)

    def _sign(self, call: LaneCall, envelope: Envelope, timeout: float) -> None:
        # as Client._sign: the same body, the same headers, the same signature
        call.body = envelope.model_dump_json(exclude_none=True, exclude_defaults=True).encode()
        issued = time.time()
        headers = {HEADER_HOST: call.host, HEADER_ISSUED_AT: round(issued, 6)}
        headers[HEADER_EXPIRES_AT] = round(issued + timeout, 6)
        if self._signer is not None:
            headers.update(self._signer.sign(call.body, call.msg_id, call.host, self.reply_queue, headers))
        call.headers = headers

    def _send(self, call: LaneCall) -> None:
        """The frames first, then the delivery tag: a command that cannot be encoded (never one with a valid
        envelope) takes no tag, which would set every later confirm one command off."""
        try:
            self._protocol.publish(
                host_queue_name(call.host), call.body, call.headers, call.correlation_id, call.msg_id
            )
        except Exception as exc:
            log.exception("[%s] not sent: the command could not be encoded", call.msg_id)
            self.forget(call)
            if not call.future.done():
                call.future.set_result(
                    Reply.error(Code.INTERNAL_ERROR, f"not sent: the command could not be encoded ({exc})")
                )
            return
        call.stage = SENT
        self._tag += 1
        self._unconfirmed[self._tag] = call

    # -- what the broker sends ----------------------------------------------------------------------------------

    def _on_ack(self, tag: int, multiple: bool) -> None:
        for call in self._settled(tag, multiple):
            call.stage = CONFIRMED

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for call in self._settled(tag, multiple):
            call.nacks += 1
            if call.correlation_id not in self._pending:
                continue  # nobody waits for it any more
            if call.nacks > NACK_RETRIES:
                self._give_up(call, f"the broker nacked the message {call.nacks} times")
                continue
            pause = min(0.1 * 2 ** (call.nacks - 1), NACK_BACKOFF_MAX_S)
            log.warning(
                "[%s] the broker nacked the publish (a queue electing its leader?); again in %.1f s", call.msg_id, pause
            )
            call.retry = self._loop.call_later(pause, self._again, call)

    def _again(self, call: LaneCall) -> None:
        call.retry = None
        if call.correlation_id not in self._pending:
            return
        if self._protocol is not None:
            self._send(call)
        else:
            self._parked.append(call)

    def _settled(self, tag: int, multiple: bool) -> list[LaneCall]:
        if not multiple:
            call = self._unconfirmed.pop(tag, None)
            return [call] if call is not None else []
        calls = []
        while self._unconfirmed and next(iter(self._unconfirmed)) <= tag:
            calls.append(self._unconfirmed.popitem(last=False)[1])
        return calls

    def _on_reply(self, body: bytes, properties: dict[str, Any]) -> None:
        correlation_id = properties.get("correlation_id")
        call = self._pending.get(correlation_id)
        if call is None:
            log.info("reply for an unknown or timed-out call (%s) dropped", correlation_id)
            return
        headers = properties.get("application_headers") or {}
        if self._signer is not None and not self._signer.reply_is_authentic(
            body, correlation_id, properties.get("message_id"), headers, call.host
        ):
            log.warning(
                "reply for %s dropped: its signature does not verify with the keys of the host the command went to"
                " (forged, or that host's key is not enrolled)",
                correlation_id,
            )
            return
        del self._pending[correlation_id]
        if call.future.done():
            return
        try:
            reply = Reply.model_validate_json(body)
        except Exception as exc:
            reply = Reply.error(Code.INTERNAL_ERROR, f"the worker's reply could not be read: {exc}")
        call.future.set_result(reply)

    def _give_up(self, call: LaneCall, why: str) -> None:
        self.forget(call)
        log.warning("[%s] publish failed: %s", call.msg_id, why)
        if not call.future.done():
            detail = (
                f"the broker did not confirm the command ({why}): it may or may not have reached the worker;"
                " SystemHandler.result with this msg_id tells"
            )
            call.future.set_result(unknown_outcome(call.msg_id, detail))

    # -- the connection -----------------------------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop and self._keeper is not None:
            # the app served again on another event loop: the old loop's connection and calls stay with it (its
            # reply queue too, while that connection lives: a new one of its own)
            self.reply_queue = reply_queue().name
            self._pending.clear()
            self._parked.clear()
            self._unconfirmed.clear()
            self._protocol = self._keeper = None
        if self._keeper is None and not self._closed:
            self._loop = loop
            self._keeper = loop.create_task(self._keep_connected(), name="kvmworker-bridge-lane")

    async def _keep_connected(self) -> None:
        """Connect, serve until the connection goes, connect again; pausing between failed rounds."""
        pauses = iter(RECONNECT_PAUSES_S)
        while not self._closed:
            try:
                protocol = await self._connect()
            except Exception as exc:
                pause = next(pauses, RECONNECT_PAUSES_S[-1])
                self._unreachable(exc, pause)
                await asyncio.sleep(pause)
                continue
            pauses = iter(RECONNECT_PAUSES_S)
            try:
                self._up(protocol)
                exc = await protocol.lost
            except Exception as failure:  # a bug here must not leave the bridge without a connection for good
                log.exception("the bridge's broker connection failed")
                protocol.close()
                exc = failure
            self._down(exc)

    async def _connect(self) -> _AmqpProtocol:
        sock, opened = await self._loop.run_in_executor(None, self._open)
        try:
            _, protocol = await self._loop.create_connection(lambda: _AmqpProtocol(self, opened), sock=sock)
        except BaseException:
            sock.close()
            raise
        return protocol

    def _open(self) -> tuple[Any, dict[str, Any]]:
        """In the executor: py-amqp connects, logs in, opens the channel in confirm mode, declares and consumes the
        reply queue; then lets go of the socket, which the loop takes."""
        conn = self._conn
        try:
            try_every_url(conn)
            raw = conn.connection
            channel = raw.channel()
            channel.confirm_select()
            channel.queue_declare(self.reply_queue, durable=False, exclusive=True, auto_delete=True)
            channel.basic_consume(self.reply_queue, no_ack=True)
            transport = raw.transport
            leftover = bytes(getattr(transport, "_read_buffer", b""))
            sock = transport.sock
            opened = {
                "channel": channel.channel_id,
                "frame_max": raw.frame_max,
                "heartbeat": raw.heartbeat or 0,
                "leftover": leftover,
                "uri": conn.as_uri(),
            }
            transport.sock = None  # py-amqp lets go of it: collecting the connection below must not shut it down
        except Exception:  # try_every_url has moved on to the next URL already: the next round starts there
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        conn.collect()
        if self._closed:  # closed while this thread connected: nobody will take the socket
            sock.close()
            raise LaneLost("the bridge closed while it connected")
        sock.settimeout(None)
        return sock, opened

    def _up(self, protocol: _AmqpProtocol) -> None:
        self._protocol = protocol
        self._tag = 0
        log.log(
            logging.INFO if self._lost_before else logging.DEBUG,
            "bridge forwarding over %s from %s",
            protocol.opened["uri"],
            protocol.local_address,
        )
        parked, self._parked = self._parked, deque()
        for call in parked:
            if call.correlation_id in self._pending:
                self._send(call)

    def _down(self, exc: BaseException | None) -> None:
        """What the connection had not confirmed goes out again on the next one, charged one failure each."""
        self._protocol = None
        self._lost_before = True
        in_flight = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        if self._closed:
            return
        self._conn.maybe_switch_next()
        log.warning(
            "the bridge lost its broker connection (%s); %d unconfirmed command(s) go out again",
            mask_secrets(str(exc or "closed")),
            len(in_flight),
        )
        again = [call for call in in_flight if self._charge(call, exc)]
        self._parked.extendleft(reversed(again))

    def _unreachable(self, exc: BaseException, pause: float) -> None:
        """A failed round of connecting: a command sent before (on a connection since lost) is charged for it, as
        the publisher charges it; one never sent waits, not sent, until its deadline, as the client parks it."""
        waiting = [call for call in self._parked if call.stage == PARKED or self._charge(call, exc)]
        self._parked = deque(waiting)
        if waiting:
            log.warning(
                "the bridge cannot reach the broker (%s); %d command(s) wait, again in %.1f s",
                mask_secrets(str(exc)),
                len(waiting),
                pause,
            )
        else:
            log.debug("the bridge cannot reach the broker (%s); again in %.1f s", mask_secrets(str(exc)), pause)

    def _charge(self, call: LaneCall, exc: BaseException | None) -> bool:
        """One more failure for ``call``: False (and -1 to its caller) once it has had its retries."""
        if call.correlation_id not in self._pending:
            return False
        call.failures += 1
        if call.failures <= LOSS_RETRIES:
            return True
        self._give_up(call, mask_secrets(str(exc or "connection lost")))
        return False

    def close(self) -> None:
        """Stop: the connection closes (the reply queue goes with it); whoever still waits is answered by the
        forwarder's drain."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._close_now()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._close_now)

    def _close_now(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


class _IncomingReply:
    """A ``basic.deliver`` whose content header and body frames are being read."""

    __slots__ = ("chunks", "properties", "received", "size")

    def __init__(self) -> None:
        self.properties: dict[str, Any] | None = None
        self.size = self.received = 0
        self.chunks: list[bytes] = []


class _AmqpProtocol(asyncio.Protocol):
    """The lane's connection on the loop: frames in, a reply assembled from its ``basic.deliver``, content header
    and body frames (``_frame``); frames out, through ``PublishFrames``, collected over one turn of the loop and
    written at once."""

    def __init__(self, lane: LoopLane, opened: dict[str, Any]):
        self.lane = lane
        self.opened = opened
        self.channel: int = opened["channel"]
        self.frame_max: int = opened["frame_max"]
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._reply: _IncomingReply | None = None  # a reply whose header or body frames are still to come
        self._publishes = PublishFrames(self.channel, self.frame_max, lane.reply_queue, lane.delivery_mode)
        self._heard = time.monotonic()
        self._ticker: asyncio.TimerHandle | None = None
        self.blocked = False

    # -- out ----------------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Sent at the end of this turn of the loop, with whatever else was written in it."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)

    def publish(self, routing_key: str, body: bytes, headers: dict[str, Any], correlation_id: str, msg_id: str) -> None:
        self.write(self._publishes.frames(routing_key, body, headers, correlation_id, msg_id))

    def _method(self, channel: int, method: tuple[int, int], args: bytes = b"") -> None:
        self.write(method_frame(channel, method, args))

    @property
    def local_address(self) -> str:
        """``host:port`` of this end of the connection, as RabbitMQ names the connection (``rabbitmqctl``)."""
        found = self._transport.get_extra_info("sockname") if self._transport is not None else None
        return f"{found[0]}:{found[1]}" if found else "?"

    # -- in -----------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._transport = transport
        self._heard = time.monotonic()
        if self.opened["heartbeat"]:
            self._ticker = self._loop.call_later(self.opened["heartbeat"] / 2, self._tick)
        if self.opened["leftover"]:
            self.data_received(self.opened["leftover"])

    def data_received(self, data: bytes) -> None:
        self._heard = time.monotonic()
        buffer = self._buffer
        buffer += data
        start, size = 0, len(buffer)
        try:
            while size - start >= 8:
                frame_type, channel, length = FRAME_HEADER.unpack_from(buffer, start)
                end = start + 7 + length
                if end >= size:
                    break
                if buffer[end] != FRAME_END:
                    raise LaneLost(f"a frame from the broker did not end with {FRAME_END:#x}")
                self._frame(frame_type, channel, bytes(buffer[start + 7 : end]))
                start = end + 1
        except Exception as exc:
            log.error("the bridge could not read what the broker sent: %s", exc)
            self._give_up_connection(exc)
            return
        finally:
            del buffer[:start]

    def _frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        """One frame: a method, or the next part of the reply being delivered (AMQP sends a message's frames
        together on its channel: another method frame of that channel in between is a broken connection)."""
        reply = self._reply
        if frame_type == 1:
            method = unpack_from(">HH", payload, 0)
            if channel != self.channel:  # the connection's own (channel 0) may come between a message's frames
                self._dispatch(channel, method, payload)
                return
            if reply is not None:
                raise LaneLost("a method frame before the end of the message being delivered")
            if method == BASIC_DELIVER:
                self._reply = _IncomingReply()
            else:
                self._dispatch(channel, method, payload)
        elif frame_type == 2:
            if reply is None or reply.properties is not None:
                raise LaneLost("a content header frame outside a delivery")
            reply.size = unpack_from(">Q", payload, 4)[0]
            reply.properties = decode_properties(payload, 12)
            if reply.size == 0:
                self._delivered(reply)
        elif frame_type == 3:
            if reply is None or reply.properties is None:
                raise LaneLost("a content body frame outside a delivery")
            reply.chunks.append(payload)
            reply.received += len(payload)
            if reply.received >= reply.size:
                self._delivered(reply)
        elif frame_type != 8:  # 8: a heartbeat, which only had to arrive
            raise LaneLost(f"a frame of unknown type {frame_type} from the broker")

    def _delivered(self, reply: _IncomingReply) -> None:
        self._reply = None
        body = reply.chunks[0] if len(reply.chunks) == 1 else b"".join(reply.chunks)
        try:
            self.lane._on_reply(body, reply.properties)
        except Exception:  # one reply's trouble (a signature check that raised) must not cost the connection
            log.exception("a reply could not be handled; dropped")

    def _dispatch(self, channel: int, method: tuple[int, int], args: bytes) -> None:
        lane = self.lane
        if method == BASIC_ACK:
            tag, bits = unpack_from(">QB", args, METHOD_ARGS)
            lane._on_ack(tag, bool(bits & 1))
        elif method == BASIC_NACK:
            tag, bits = unpack_from(">QB", args, METHOD_ARGS)
            lane._on_nack(tag, bool(bits & 1))
        elif method == CONNECTION_CLOSE:
            self._method(0, CONNECTION_CLOSE_OK)
            self._give_up_connection(LaneLost(f"the broker closed the connection: {_close_reason(args)}"))
        elif method == CHANNEL_CLOSE:
            self._method(channel, CHANNEL_CLOSE_OK)
            self._give_up_connection(LaneLost(f"the broker closed the channel: {_close_reason(args)}"))
        elif method == BASIC_CANCEL:
            self._give_up_connection(LaneLost("the broker cancelled the reply consumer (its queue was deleted?)"))
        elif method == CONNECTION_BLOCKED:
            self.blocked = True
            log.warning("the broker blocks publishing (a memory or disk alarm): commands wait")
        elif method == CONNECTION_UNBLOCKED:
            self.blocked = False
            log.info("the broker publishes again")

    def _tick(self) -> None:
        """Every half heartbeat: one heartbeat frame out; a broker silent for two heartbeats is gone."""
        heartbeat = self.opened["heartbeat"]
        if time.monotonic() - self._heard > 2 * heartbeat:
            self._give_up_connection(LaneLost(f"no frame from the broker for {2 * heartbeat:g} s"))
            return
        self.write(HEARTBEAT_FRAME)
        self._ticker = self._loop.call_later(heartbeat / 2, self._tick)

    def _give_up_connection(self, exc: BaseException) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()
        self._finish(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or LaneLost("the broker closed the connection"))

    def _finish(self, exc: BaseException | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if not self.lost.done():
            self.lost.set_result(exc)

    def close(self) -> None:
        """A polite close: ``connection.close`` (reply code 200), then the socket; the close-ok is not awaited."""
        self._method(0, CONNECTION_CLOSE, dumps("BsBB", (200, "bridge stopping", 0, 0)))
        self._flush()
        if self._transport is not None:
            self._transport.close()
        self._finish(None)


def _close_reason(args: bytes) -> str:
    try:
        code, length = unpack_from(">HB", args, METHOD_ARGS)
        text = args[METHOD_ARGS + 3 : METHOD_ARGS + 3 + length]
        return f"{code} {text.decode(errors='replace')}"
    except Exception:
        return "no reason given"
