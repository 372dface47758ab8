"""AMQP 0-9-1 frames written by hand, byte for byte what py-amqp's ``frame_writer`` writes, at a fraction of its
Python cost: the worker's replies and settlings (transport/amqp_session.py), the publisher's commands
(transport/publisher.py) and the bridge lane's commands (bridge/looplane.py) are framed here.

A frame: type, channel, payload size (``FRAME_HEADER``), the payload, the frame-end octet. A publish: the
``basic.publish`` method frame, the content header (class, weight, body size, property flags, properties) and
the body cut in frames of ``frame_max - 8`` octets. Headers tables of text and floats (what this project sends)
are encoded here; any other table goes to py-amqp's own encoder, so the bytes are always py-amqp's.
"""

from __future__ import annotations

import struct
from typing import Any

from amqp import spec
from amqp.basic_message import Message as AmqpMessage
from amqp.serialization import dumps

FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size; the payload and the frame-end octet follow
FRAME_END = 0xCE
FRAME_END_BYTE = bytes((FRAME_END,))
METHOD, CONTENT_HEADER, CONTENT_BODY = 1, 2, 3  # frame types
BASIC_CLASS = spec.Basic.Publish[0]

_METHOD_IDS = struct.Struct(">HH")
_PUBLISH_ARGS = struct.pack(">HHH", *spec.Basic.Publish, 0)  # class, method, the reserved short
_CONTENT = struct.Struct(">HHQ")  # class, weight, body size; the property flags and the properties follow
_SETTLE = struct.Struct(">BHIHHQBB")  # basic.ack / basic.reject: a whole frame of 13 octets' payload
_ACK, _REJECT = spec.Basic.Ack, spec.Basic.Reject
_LONG = struct.Struct(">I")
_TEXT_HEAD = struct.Struct(">cI")
_FLOAT = struct.Struct(">cd")

# The basic class's properties in the order of their flag bits: the flag, the name, py-amqp's kind
PROPERTIES = tuple((1 << (15 - index), name, kind) for index, (name, kind) in enumerate(AmqpMessage.PROPERTIES))
_FRAMED = frozenset(name for _, name, kind in PROPERTIES if kind != "L")  # a timestamp: py-amqp converts it


def shortstr(text: str | None) -> bytes:
    """An AMQP short string (None: the empty one), as py-amqp encodes it."""
    data = (text or "").encode("utf-8", "surrogatepass")
    if len(data) > 255:
        raise ValueError(f"an AMQP short string holds 255 bytes at most: {text[:40]!r}…")  # type: ignore[index]
    return bytes((len(data),)) + data


def table(headers: Any) -> bytes:
    """An AMQP field table as py-amqp writes it: names and values of text (``S``) or floats (``d``), the headers
    this project sends, encoded here; a table holding anything else goes to py-amqp's own encoder."""
    items = []
    for key, value in headers.items():
        if type(key) is not str:
            return dumps("F", (dict(headers),))
        name = key.encode("utf-8", "surrogatepass")
        if type(value) is str:
            data = value.encode("utf-8", "surrogatepass")
            items += (bytes((len(name),)), name, _TEXT_HEAD.pack(b"S", len(data)), data)  # bytes(): > 255 raises
        elif type(value) is float:
            items += (bytes((len(name),)), name, _FLOAT.pack(b"d", value))
        else:
            return dumps("F", (dict(headers),))
    encoded = b"".join(items)
    return _LONG.pack(len(encoded)) + encoded


def method_frame(channel: int, method: tuple[int, int], args: bytes = b"") -> bytes:
    payload = _METHOD_IDS.pack(*method) + args
    return FRAME_HEADER.pack(METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def publish_method(channel: int, exchange: str, routing_key: str) -> bytes:
    """basic.publish's method frame (mandatory and immediate off); a name over 255 bytes raises ValueError."""
    exchange_field = shortstr(exchange) if exchange else b"\0"  # most go to the default exchange
    args = b"".join((_PUBLISH_ARGS, exchange_field, shortstr(routing_key), b"\0"))
    return FRAME_HEADER.pack(METHOD, channel, len(args)) + args + FRAME_END_BYTE


def encoded_properties(properties: dict[str, Any]) -> bytes | None:
    """The property flags and the properties (the None ones left out) as py-amqp's content header carries them;
    None for what this does not encode (a timestamp, a property py-amqp does not know): py-amqp encodes those."""
    if not properties.keys() <= _FRAMED:
        return None
    flags, kinds, values = 0, [], []
    for bit, name, kind in PROPERTIES:
        value = properties.get(name)
        if value is not None:
            flags |= bit
            kinds.append(kind)
            values.append(value)
    return struct.pack(">H", flags) + dumps("".join(kinds), values)


def publish_frames(channel: int, frame_max: int, method: bytes, properties: bytes, body: bytes) -> bytes:
    """A publish: its method frame (``publish_method``, which a caller may keep), the content header around the
    encoded property flags and properties, the body frames."""
    header = _CONTENT.pack(BASIC_CLASS, 0, len(body)) + properties
    parts = [method, FRAME_HEADER.pack(CONTENT_HEADER, channel, len(header)), header, FRAME_END_BYTE]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts += (FRAME_HEADER.pack(CONTENT_BODY, channel, len(piece)), piece, FRAME_END_BYTE)
    return b"".join(parts)


def settle_frame(channel: int, tag: int, ack: bool) -> bytes:
    """basic.ack (not multiple), or basic.reject with requeue, as one whole frame."""
    return _SETTLE.pack(METHOD, channel, 13, *(_ACK if ack else _REJECT), tag, 0 if ack else 1, FRAME_END)
