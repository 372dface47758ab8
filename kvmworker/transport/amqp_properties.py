"""A delivery's AMQP properties (its content header) decoded as py-amqp's ``decode_properties_basic`` decodes them,
at a third of its cost: the worker decodes one per message.

Every property is read here, and a headers table whose values are text, numbers, flags or void (what clients
send); a table holding anything else (a nested table, an array, a decimal, a timestamp …) goes to py-amqp's
decoder whole, so that the result is always exactly py-amqp's.
"""

from __future__ import annotations

import struct
from typing import Any

from amqp.serialization import decode_properties_basic

_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_INT = struct.Struct(">i")
_LONGLONG = struct.Struct(">q")
_ULONGLONG = struct.Struct(">Q")
_DOUBLE = struct.Struct(">d")

# In the order of their flag bits, as the content header carries them: the flag, the name, the kind.
_SHORTSTR, _TABLE, _OCTET, _TIMESTAMP = range(4)
_PROPERTIES = (
    (0x8000, "content_type", _SHORTSTR),
    (0x4000, "content_encoding", _SHORTSTR),
    (0x2000, "application_headers", _TABLE),
    (0x1000, "delivery_mode", _OCTET),
    (0x0800, "priority", _OCTET),
    (0x0400, "correlation_id", _SHORTSTR),
    (0x0200, "reply_to", _SHORTSTR),
    (0x0100, "expiration", _SHORTSTR),
    (0x0080, "message_id", _SHORTSTR),
    (0x0040, "timestamp", _TIMESTAMP),
    (0x0020, "type", _SHORTSTR),
    (0x0010, "user_id", _SHORTSTR),
    (0x0008, "app_id", _SHORTSTR),
    (0x0004, "cluster_id", _SHORTSTR),
)


class _Unusual(Exception):
    """A table value of a kind read by py-amqp alone."""


def decode_properties(payload: bytes, offset: int) -> dict[str, Any]:
    """The properties of a content header whose property flags start at ``offset``."""
    try:
        return _decode(payload, offset)
    except _Unusual:
        return decode_properties_basic(payload, offset)[0]


_PLANS: dict[int, tuple[tuple[str, int], ...]] = {}  # by property flags: the properties present (≤ 2¹⁴ of them)


def _plan(flags: int) -> tuple[tuple[str, int], ...]:
    plan = _PLANS.get(flags)
    if plan is None:
        plan = _PLANS[flags] = tuple((name, kind) for flag, name, kind in _PROPERTIES if flags & flag)
    return plan


def _decode(payload: bytes, offset: int) -> dict[str, Any]:
    (flags,) = _SHORT.unpack_from(payload, offset)
    offset += 2
    properties: dict[str, Any] = {}
    for name, kind in _PLANS.get(flags) or _plan(flags):
        if kind == _SHORTSTR:
            end = offset + 1 + payload[offset]
            properties[name] = payload[offset + 1 : end].decode("utf-8", "surrogatepass")
            offset = end
        elif kind == _TABLE:
            properties[name], offset = _table(payload, offset)
        elif kind == _OCTET:
            properties[name] = payload[offset]
            offset += 1
        else:
            (properties[name],) = _ULONGLONG.unpack_from(payload, offset)
            offset += 8
    return properties


def _table(payload: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    (size,) = _LONG.unpack_from(payload, offset)
    offset += 4
    limit = offset + size
    table: dict[Any, Any] = {}
    while offset < limit:
        end = offset + 1 + payload[offset]
        key: Any = _text(payload[offset + 1 : end])
        kind = payload[end]
        offset = end + 1
        if kind == 0x53:  # S: long string
            (length,) = _LONG.unpack_from(payload, offset)
            offset += 4
            table[key] = _text(payload[offset : offset + length])
            offset += length
        elif kind == 0x64:  # d: double
            (table[key],) = _DOUBLE.unpack_from(payload, offset)
            offset += 8
        elif kind == 0x49:  # I: signed 32 bits
            (table[key],) = _INT.unpack_from(payload, offset)
            offset += 4
        elif kind == 0x6C or kind == 0x4C:  # l, L: signed 64 bits (as py-amqp reads both)
            (table[key],) = _LONGLONG.unpack_from(payload, offset)
            offset += 8
        elif kind == 0x74:  # t: boolean
            table[key] = bool(payload[offset])
            offset += 1
        elif kind == 0x56:  # V: void
            table[key] = None
        else:
            raise _Unusual
    return table, offset


def _text(data: bytes) -> Any:
    """A table's key or string as py-amqp reads it: text, or the bytes when they are not UTF-8."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data
