"""Redis's protocol (RESP), the little of it the worker and the client write and read themselves: commands packed
as redis-py's packer writes them, and answers read from a buffer, at a fraction of redis-py's cost; and the JSON
text of kombu's message, as kombu's Redis channel writes it."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _escape  # json.dumps's own, in C
from typing import Any

from kvmworker.protocol.codec import JSON_CONTENT_TYPE


def bulk(data: bytes) -> bytes:
    """One argument of a command (a bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """Commands in Redis's protocol (RESP), as redis-py's packer writes them, at a fraction of its cost."""
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if isinstance(arg, bytes) else (repr(arg) if isinstance(arg, float) else str(arg)).encode()
            parts.append(bulk(data))
    return b"".join(parts)


def lpush(key: bytes, value: bytes) -> bytes:
    """``LPUSH key value``, packed (on the path of every message over Redis: no loop)."""
    return b"".join((b"*3\r\n$5\r\nLPUSH\r\n", bulk(key), bulk(value)))


def kombu_message(
    body: bytes, headers: Mapping[str, Any], properties: Mapping[str, Any], queue: str, tag: str
) -> bytes:
    """The JSON text kombu's Redis channel writes for a message to ``queue`` through the default exchange (its
    body in base64, kombu's defaults), byte for byte as ``json.dumps`` writes kombu's dict, without building
    the dict: on the path of every message over Redis."""
    props = "".join(f"{_escape(key)}: {_json_value(value)}, " for key, value in properties.items())
    return (
        f'{{"body": "{base64.b64encode(body).decode()}", "content-encoding": "utf-8", "content-type": '
        f'{_CONTENT_TYPE}, "headers": {_json_object(headers)}, "properties": {{{props}"delivery_info": '
        f'{{"exchange": "", "routing_key": {_escape(queue)}}}, "priority": 0, "body_encoding": "base64", '
        f'"delivery_tag": {_escape(tag)}}}}}'
    ).encode()


def _json_value(value: Any) -> str:
    """``value`` as ``json.dumps`` writes it (its C encoder for strings, at a fraction of a call of it)."""
    kind = type(value)
    if kind is str:
        return _escape(value)
    if kind is float:
        return float.__repr__(value) if value == value and value not in _INFINITE else json.dumps(value)
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value)  # None, bools, containers, anything else (its TypeError as json.dumps raises it)


def _json_object(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "{}"
    if not all(type(key) is str for key in mapping):
        return json.dumps(dict(mapping))  # json.dumps's own conversion of keys that are not strings
    return "{" + ", ".join(f"{_escape(key)}: {_json_value(value)}" for key, value in mapping.items()) + "}"


_INFINITE = (float("inf"), float("-inf"))
_CONTENT_TYPE = _escape(JSON_CONTENT_TYPE)


class Incomplete(Exception):
    """The answer is not all read yet."""


class RedisError(bytes):
    """An error answer."""


def read_answer(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One answer of Redis's protocol (RESP2 or RESP3) from ``buf`` at ``pos``: its value (an error as a
    ``RedisError``) and where the next begins; ``Incomplete`` when it is not all there."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind = buf[pos]
    if kind == 42:  # "*", an array: a take's messages, a BRPOP's key and message (its bulk strings read here)
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        pos = end + 2
        for _ in range(count):
            if pos < len(buf) and buf[pos] == 36:  # "$"
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise Incomplete
                size = int(buf[pos + 1 : end])
                if size < 0:
                    items.append(None)
                    pos = end + 2
                    continue
                pos = end + 2 + size
                if len(buf) < pos + 2:
                    raise Incomplete
                items.append(bytes(buf[end + 2 : pos]))
                pos += 2
            else:
                item, pos = read_answer(buf, pos)
                items.append(item)
        return items, pos
    line, pos = bytes(buf[pos + 1 : end]), end + 2
    if kind in b"$=!":  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        data = bytes(buf[pos : pos + size])
        return (RedisError(data) if kind == 33 else data), pos + size + 2
    if kind in b"~>%|":  # set, push, map (and attribute): their items in a row
        count = int(line)
        if count < 0:
            return None, pos
        if kind in b"%|":
            count *= 2
        items = []
        for _ in range(count):
            item, pos = read_answer(buf, pos)
            items.append(item)
        if kind == 124:  # an attribute: the answer follows it
            return read_answer(buf, pos)
        if kind == 62:  # a push (out of band, never asked for here): not an answer
            return read_answer(buf, pos)
        return items, pos
    if kind == 45:  # "-": an error
        return RedisError(line), pos
    if kind == 95:  # "_": null
        return None, pos
    return line, pos  # +simple, :integer, ,double, #boolean, (big number: the worker needs none of them
