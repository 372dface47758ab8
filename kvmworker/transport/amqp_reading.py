"""AMQP 0-9-1 frames read by hand: a socket read in chunks without blocking, whole frames cut out of what came,
and a consuming channel's deliveries put together from their frames (basic.deliver, its content header, its
body's frames), their properties decoded as py-amqp decodes them (``amqp_properties``).

py-amqp's own reader asks the socket for each frame's header, payload and end octet in turn (three ``recv`` per
frame) and builds a channel dispatch, a promise and a ``Message`` per delivery. The worker's session
(transport/amqp_session.py), the client's reply reader (client.py) and the publisher's confirm reader
(transport/publisher.py) read here instead; every frame they do not take goes to py-amqp as it would read it.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from amqp import spec
from amqp.exceptions import UnexpectedFrame

from kvmworker.transport.amqp_frames import FRAME_END, FRAME_END_BYTE, FRAME_HEADER
from kvmworker.transport.amqp_properties import decode_properties

RECV_CHUNK = 64 * 1024  # one receive of a socket, at most
DELIVER = struct.pack(">HH", *spec.Basic.Deliver)  # a method frame's first four octets: class and method ids
ACK = struct.pack(">HH", *spec.Basic.Ack)
TAG_AND_BIT = struct.Struct(">QB")  # a delivery tag and the bit after it (redelivered, multiple)
_BODY_SIZE = struct.Struct(">Q")  # in a content header, after its class id and weight


def receive(sock: Any, buf: bytearray) -> bool:
    """What ``sock`` has now, appended to ``buf`` (received without blocking until it runs dry); False when the
    peer has closed the connection."""
    return _drain(sock.recv, buf, RECV_CHUNK, socket.MSG_DONTWAIT)


def receive_fd(fd: int, buf: bytearray) -> bool:
    """``receive`` for a socket with a timeout (its descriptor non-blocking): read with ``os.read``, which returns
    what is there, where Python's ``recv`` would first wait for the socket."""
    return _drain(os.read, buf, fd, RECV_CHUNK)


def _drain(read: Any, buf: bytearray, *args: Any) -> bool:
    while True:
        try:
            chunk = read(*args)
        except (BlockingIOError, InterruptedError):
            return True
        if not chunk:
            return False
        buf += chunk
        if len(chunk) < RECV_CHUNK:
            return True


def cut_frames(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """The whole frames at the start of ``buf`` (type, channel, payload), taken out of it; a frame begun stays."""
    frames, start, size = [], 0, len(buf)
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


def takes(frame_type: int, payload: bytes) -> bool:
    """A frame of a consuming channel that ``Deliveries`` takes: a delivery's, not another method (a cancel …)."""
    return frame_type != 1 or payload[:4] == DELIVER


class Arriving:
    """A delivery's frames as they come: basic.deliver, then its content header, then its body's frames."""

    __slots__ = ("deliver", "header", "parts", "properties", "received", "size")

    def __init__(self, deliver: bytes):
        self.deliver, self.header = deliver, b""
        self.properties: dict[str, Any] | None = None
        self.parts: list[bytes] = []
        self.size = self.received = 0

    def tag_and_redelivered(self) -> tuple[int, bool]:
        tag, redelivered = TAG_AND_BIT.unpack_from(self.deliver, 5 + self.deliver[4])  # past the consumer tag
        return tag, bool(redelivered & 1)

    def body(self) -> bytes:
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def frames(self, channel: int) -> bytes:
        """The frames received so far, byte for byte as they came."""
        types = (1, 2, *(3 for _ in self.parts)) if self.properties is not None else (1,)
        payloads = (self.deliver, self.header, *self.parts)
        return b"".join(
            FRAME_HEADER.pack(kind, channel, len(payload)) + payload + FRAME_END_BYTE
            for kind, payload in zip(types, payloads, strict=False)
        )


class Deliveries:
    """One consuming channel's deliveries, put together from the frames ``takes`` says are theirs."""

    __slots__ = ("_what", "arriving")

    def __init__(self, what: str):
        self._what = what  # "delivery", "reply": in what a broker out of order is told
        self.arriving: Arriving | None = None

    def feed(self, frame_type: int, payload: bytes) -> Arriving | None:
        """The delivery this frame completes, or None."""
        arriving = self.arriving
        if frame_type == 1:
            if arriving is not None:
                raise UnexpectedFrame(f"basic.deliver while a {self._what}'s content was expected")
            self.arriving = Arriving(payload)
            return None
        if arriving is None or frame_type != (2 if arriving.properties is None else 3):
            raise UnexpectedFrame(f"frame type {frame_type} on the {self._what}'s channel out of order")
        if frame_type == 2:
            arriving.header = payload
            (arriving.size,) = _BODY_SIZE.unpack_from(payload, 4)
            arriving.properties = decode_properties(payload, 12)
        else:
            arriving.parts.append(payload)
            arriving.received += len(payload)
        if arriving.received >= arriving.size:
            self.arriving = None
            return arriving
        return None
