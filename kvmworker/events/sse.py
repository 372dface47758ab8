"""``GET /events`` at the bridge: the event stream as Server-Sent Events, for HTTP callers (§7).

Behind the bridge's authentication like its POST routes (``Authorization: Bearer``; HTTP 401 with a 20004
reply when missing or wrong), filtered by ``?host=`` and ``?source=``, and to the hosts the caller's grants
reach. Each event is one SSE message: ``id: <host>:<seq>`` and ``data: <the event's JSON body>``; a missed
stretch of ``seq`` is an ``event: gap`` message (``data: {"gap": true, "host", "first", "last", "reset"}``)
before the event that revealed it. A comment line (``: connected``) opens the stream once it is subscribed
(events from then on are delivered), and ``: keepalive`` follows every ``KEEPALIVE_S`` seconds of silence.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kvmworker.events.consumer import Gap, GapDetector
from kvmworker.events.model import WORD, Event
from kvmworker.events.relay import Relay
from kvmworker.protocol.codec import encode_reply
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.errors import Unauthenticated

log = logging.getLogger("kvmworker.bridge")

KEEPALIVE_S = 15.0
RELAY_READY_S = 10.0
HOST = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
SOURCE = re.compile(WORD)
JSON_UTF8 = "application/json; charset=utf-8"


class EventStreams:
    def __init__(
        self, relay: Relay, auth: Any, registry: CollectorRegistry | None = None, keepalive: float = KEEPALIVE_S
    ):
        self._relay = relay
        self._auth = auth  # kvmworker.bridge.auth.Authenticator, or None (--insecure-open)
        self._keepalive = keepalive
        self._subscriptions: set[Any] = set()
        self._draining = False
        registry = registry or CollectorRegistry()
        self.open = Gauge("kvmworker_bridge_event_streams", "GET /events streams open now.", registry=registry)
        self.sent = Counter("kvmworker_bridge_events_sent", "Events sent on GET /events streams.", registry=registry)

    def drain(self) -> None:
        """The server is stopping: end every open stream now (they would hold up its graceful shutdown)."""
        self._draining = True
        for subscription in list(self._subscriptions):
            subscription.close()

    def close(self) -> None:
        self.drain()
        self._relay.close()

    async def get(self, request: Request) -> Response:
        host = request.query_params.get("host") or None
        source = request.query_params.get("source") or None
        if host is not None and not HOST.fullmatch(host):
            return _refuse(400, Code.INVALID_REQUEST, "host is not a host name (1-200 of A-Z a-z 0-9 _ . : -)", "host")
        if source is not None and not SOURCE.fullmatch(source):
            return _refuse(400, Code.INVALID_REQUEST, "source is one lower-case word (vm, network, link, …)", "source")
        try:
            may_see = self._grants(request, host)
        except Unauthenticated as exc:
            return _refuse(401 if exc.field is None else 403, Code.UNAUTHENTICATED, str(exc), exc.field)
        if self._draining:
            return _refuse(503, Code.BUSY, "the bridge is stopping", None)
        subscription = self._relay.fanout.subscribe(host, source)
        self._subscriptions.add(subscription)
        try:
            if not self._relay.local:
                ready = await asyncio.get_running_loop().run_in_executor(None, self._relay.ready.wait, RELAY_READY_S)
                if not ready:
                    log.warning("GET /events: the broker's event queue is not bound yet; streaming anyway")
        except BaseException:
            subscription.close()
            raise
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(self._stream(subscription, may_see), media_type="text/event-stream", headers=headers)

    def _grants(self, request: Request, host: str | None) -> Any:
        """A predicate over host names: the hosts this caller may see. Raises Unauthenticated."""
        if self._auth is None:
            return lambda h: True
        from kvmworker.bridge.auth import bearer_token

        principal = self._auth.principal(bearer_token(request.headers.get("authorization")))
        patterns = principal.grants.hosts
        if host is not None and not any(fnmatch.fnmatchcase(host, p) for p in patterns):
            raise Unauthenticated(f"user {principal.name!r} may not reach host {host[:64]!r}", field="host")
        return lambda h: any(fnmatch.fnmatchcase(h, p) for p in patterns)

    async def _stream(self, subscription: Any, may_see: Any) -> AsyncIterator[bytes]:
        detector = GapDetector()
        self.open.inc()
        try:
            yield b": connected\n\n"
            while not subscription.closed:
                event = await subscription.aget(self._keepalive)
                if event is None:
                    if not subscription.closed:
                        yield b": keepalive\n\n"
                    continue
                if not may_see(event.host):
                    continue
                gap, fresh = detector.check(event)
                if gap is not None:
                    yield sse_gap(gap)
                if fresh:
                    self.sent.inc()
                    yield sse_event(event)
        finally:
            self.open.dec()
            subscription.close()
            self._subscriptions.discard(subscription)


def event_streams(broker: str, signer: Any, auth: Any, registry: CollectorRegistry | None = None) -> EventStreams:
    """The bridge's ``GET /events``: events of ``broker`` (verified with ``signer`` when there is one)."""
    return EventStreams(Relay(broker, signer), auth, registry)


def sse_event(event: Event) -> bytes:
    return f"id: {event.host}:{event.seq}\ndata: {event.to_body().decode()}\n\n".encode()


def sse_gap(gap: Gap) -> bytes:
    return f"event: gap\ndata: {json.dumps(gap.to_dict())}\n\n".encode()


def _refuse(status: int, code: Code, detail: str, field: str | None) -> Response:
    reply = Reply.error(code, detail, field=field)
    return Response(encode_reply(reply), status_code=status, media_type=JSON_UTF8)
