"""Redis's protocol (RESP), the little of it the worker and the client write and read themselves: commands packed
as redis-py's packer writes them, and answers read from a buffer, at a fraction of redis-py's cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
    kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind in b"$=!":  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        data = bytes(buf[pos : pos + size])
        return (RedisError(data) if kind == 33 else data), pos + size + 2
    if kind in b"*~>%|":  # array, set, push, map (and attribute): their items in a row
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
