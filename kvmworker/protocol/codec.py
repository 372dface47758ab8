"""Bytes ↔ JSON with the limits a hostile publisher cannot get past.

Only ``application/json`` is ever decoded: other content types (pickle, YAML, ...) are refused
before their bytes are looked at. The size cap is checked before decoding, nesting and integer
size after, so that no body can crash the consumer or loop through requeue.
"""

from __future__ import annotations

import json
from typing import Any

from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.errors import InvalidRequest

JSON_CONTENT_TYPE = "application/json"
DEFAULT_MAX_BODY = 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 40


def decode_body(body: bytes, content_type: str | None, max_bytes: int = DEFAULT_MAX_BODY) -> Any:
    if content_type != JSON_CONTENT_TYPE and (content_type or "").split(";")[0].strip().lower() != JSON_CONTENT_TYPE:
        raise InvalidRequest(f"content type {content_type!r} is refused; only {JSON_CONTENT_TYPE} is accepted")
    if len(body) > max_bytes:
        raise InvalidRequest(f"body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        value = _DECODER.decode(body.decode(json_encoding(body), "surrogatepass"))  # as json.loads(bytes)
    except RecursionError:
        raise InvalidRequest("body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not JSON: {_short(exc)}") from None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH:  # fewer brackets cannot nest that deep: skip the walk
        _check_depth(value)
    return value


def json_encoding(body: bytes) -> str:
    """``json.detect_encoding``: answered at once for a body that starts as every client's does, ``{`` and then
    a byte that is not zero (UTF-8 then: no BOM, not UTF-16/32); any other goes through it."""
    if body[:1] == b"{" and body[1:2] not in (b"", b"\0"):
        return "utf-8"
    return json.detect_encoding(body)


def encode_reply(reply: Reply) -> bytes:
    """``reply.model_dump_json().encode()``: the serializer's own bytes, without the wrapper and the round trip
    through ``str``."""
    return type(reply).__pydantic_serializer__.to_json(reply)


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is too large")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_no_constant)  # json.loads makes one per call


def _check_depth(value: Any) -> None:
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [child for item in level for child in _children(item)]
        if not level:
            return
    raise InvalidRequest(f"body nests deeper than {MAX_DEPTH} levels")


def _children(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return [v for v in item.values() if isinstance(v, dict | list)]
    if isinstance(item, list):
        return [v for v in item if isinstance(v, dict | list)]
    return []


def _short(exc: Exception) -> str:
    return str(exc)[:200]
