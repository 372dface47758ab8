"""The request body: counted while it streams in, so an oversize body is refused before it is read whole.

The HTTP content type is not looked at: legacy callers send JSON as ``text/plain``, form types or
nothing at all; the bytes must be a JSON envelope, whatever the header says.
"""

from __future__ import annotations

import re

from starlette.requests import Request as HttpRequest

from kvmworker.dispatch.dispatcher import parse_envelope
from kvmworker.protocol.codec import JSON_CONTENT_TYPE, decode_body
from kvmworker.protocol.envelope import Envelope
from kvmworker.protocol.errors import InvalidRequest

HOST_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class BodyTooLarge(InvalidRequest):
    """The rest of the body is never read, so the connection must be closed after the answer."""


async def read_envelope(request: HttpRequest, max_bytes: int) -> Envelope:
    body = await read_body(request, max_bytes)
    return parse_envelope(decode_body(body, JSON_CONTENT_TYPE, max_bytes))


async def read_body(request: HttpRequest, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise BodyTooLarge(f"Content-Length {declared[:20]} is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_host(host: str, allowed: frozenset[str] | None = None) -> str:
    """A routing key we are willing to publish to (and so to declare a durable queue for)."""
    if not HOST_NAME.fullmatch(host):
        raise InvalidRequest(f"{host[:64]!r} is not a host name (1-200 of A-Z a-z 0-9 _ . : -)", field="host")
    if allowed is not None and host not in allowed:
        raise InvalidRequest(f"this bridge does not serve host {host!r} (see allowed_hosts)", field="host")
    return host
