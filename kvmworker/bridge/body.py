"""The request body: counted and timed while it streams in, so an oversize or trickling body is refused early.

The bytes must be a JSON envelope. The HTTP content type may be missing (older callers that send a
bare body) or JSON (``application/json``, ``application/*+json``); the types a web page can send to
another site without asking first (``text/plain``, form types) are refused in ``guard.py``.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.types import Scope

from kvmworker.protocol.codec import JSON_CONTENT_TYPE, decode_body
from kvmworker.protocol.envelope import Envelope, parse_envelope
from kvmworker.protocol.errors import InvalidRequest

HOST_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class BodyTooLarge(InvalidRequest):
    """The rest of the body is never read, so the connection must be closed after the answer."""


class BodyTooSlow(BodyTooLarge):
    """The body did not arrive within its time: the connection is closed after the answer."""


async def read_envelope(request: HttpRequest, max_bytes: int, timeout: float | None = None) -> Envelope:
    if timeout is None or body_already_in(request):  # nothing to wait for: no deadline to set and cancel
        body = await read_body(request, max_bytes)
    else:
        try:
            async with asyncio.timeout(timeout):
                body = await read_body(request, max_bytes)
        except TimeoutError:
            raise BodyTooSlow(f"the body did not arrive within {timeout:g} s") from None
    return parse_envelope(decode_body(body, JSON_CONTENT_TYPE, max_bytes))


def body_already_in(request: HttpRequest) -> bool:
    """uvicorn has parsed the whole request (its ``RequestResponseCycle.more_body`` is False once the message is
    complete), so reading the body cannot wait: the usual case, a small body in the segment of its headers.
    Under any other server, or while the body still streams in, False: the body's deadline applies."""
    cycle = getattr(request.receive, "__self__", None)
    return getattr(cycle, "more_body", True) is False


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first header of that (lower-case) name, as Starlette's ``request.headers.get`` reads it, without
    building its ``Headers`` and raising a ``KeyError`` inside it for a header the request does not have."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(request: HttpRequest, max_bytes: int) -> bytes:
    declared = first_header(request.scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise BodyTooLarge(f"Content-Length {declared[:20]} is over the limit of {max_bytes} bytes")
    chunks, size, more = [], 0, True
    while more:  # the ASGI messages themselves: what Request.stream() does, without an async generator per request
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
