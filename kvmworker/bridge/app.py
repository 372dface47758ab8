"""The ASGI application: ``POST /`` and ``POST /hosts/<host>`` (INTERFACE §5), probes, metrics, OpenAPI.

Every POST that reaches ``Bridge.post`` is answered HTTP 200 with ``{code, msg, data}``: any failure,
expected or not, becomes a reply there alone. Before that, ``RequestGuard`` refuses what a web page
could send on a browser's behalf (foreign Host or Origin, non-JSON content types) with an HTTP error.
``UserHandler`` is answered here; everything else goes to a worker, in this order: who is calling
(20004), may they reach this host and command (20004 naming what is refused), is the host one this
bridge serves and has a queue (20001 ``field: host``), and only then is the command signed and published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kvmworker.api.catalogue import bridge_commands, worker_commands
from kvmworker.api.user import LoginData, UserApi
from kvmworker.bridge.auth import Authenticator, LocalToken, Principal, bearer_token
from kvmworker.bridge.body import BodyTooLarge, first_header, read_envelope
from kvmworker.bridge.forwarder import Forwarder
from kvmworker.bridge.guard import RequestGuard
from kvmworker.bridge.health import BrokerProbe
from kvmworker.bridge.hosts import HostDirectory
from kvmworker.bridge.looplane import LoopLane, usable
from kvmworker.bridge.metrics import BridgeMetrics
from kvmworker.bridge.openapi import build_openapi
from kvmworker.bridge.throttle import Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import UsersFile
from kvmworker.client import Client
from kvmworker.dispatch.commands import Declared
from kvmworker.dispatch.replies import reply_for_exception
from kvmworker.events.sse import EventStreams, event_streams
from kvmworker.observability.health import health_answer
from kvmworker.protocol.codec import encode_reply
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.protocol.errors import UnknownCommand
from kvmworker.protocol.urls import mask_url
from kvmworker.settings import Settings

log = logging.getLogger("kvmworker.bridge")

JSON_UTF8 = "application/json; charset=utf-8"
USER_HANDLER = UserApi.name
# argon2 is slow and memory-hungry on purpose: a few verifications at a time, whatever the load
LOGIN_THREADS = 2
LOOKUP_THREADS = 2
HOSTS_PREFIX = "/hosts/"


class Bridge:
    def __init__(
        self,
        forwarder: Forwarder,
        default_host: str,
        max_body: int,
        auth: Authenticator | None,
        metrics: BridgeMetrics,
        probe: BrokerProbe,
        openapi: dict,
        hosts: HostDirectory,
        body_timeout: float | None = None,
    ):
        self._forwarder = forwarder
        self._hosts = hosts
        self._default_host = default_host
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._auth = auth
        self._metrics = metrics
        self._probe = probe
        self._openapi = json.dumps(openapi, ensure_ascii=False).encode()
        self._login_pool = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="bridge-login")
        self._lookup_pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="bridge-hosts")

    # -- POST ------------------------------------------------------------------

    async def post_default(self, request: HttpRequest) -> JsonReply:
        return await self.post(request, first_header(request.scope, b"x-kvm-host") or self._default_host)

    async def post_host(self, request: HttpRequest) -> JsonReply:
        return await self.post(request, request.path_params["host"])

    async def post(self, request: HttpRequest, host: str) -> JsonReply:
        """The one place where any failure of a POST becomes a ``{code, msg, data}`` reply."""
        started = time.perf_counter()
        envelope: Envelope | None = None
        close = False
        self._metrics.in_flight_now += 1
        try:
            envelope = await read_envelope(request, self._max_body, self._body_timeout)
            reply = await self._answer(request, envelope, host)
        except Exception as exc:
            reply = reply_for_exception(exc, context=f"[bridge {_address(request) or '-'}] ")
            close = isinstance(exc, BodyTooLarge)
        finally:  # a caller that hangs up cancels this task: the gauge must come down all the same
            self._metrics.in_flight_now -= 1
        return self._respond(reply, envelope, started, close)

    async def _answer(self, request: HttpRequest, envelope: Envelope, host: str) -> Reply:
        if envelope.handler == USER_HANDLER:
            return await self._user_command(request, envelope)
        principal = self._authorised(request, envelope, host)
        host = self._hosts.check_name(host)
        if not self._hosts.seen_recently(host):  # the usual case answers here, without a hop to a thread
            await asyncio.get_running_loop().run_in_executor(self._lookup_pool, self._hosts.check_exists, host)
        # only what passed every check above is signed and published
        return await self._forwarder.forward(host, envelope, principal.name if principal else None)

    def _authorised(self, request: HttpRequest, envelope: Envelope, host: str) -> Principal | None:
        if self._auth is None:
            return None
        principal = self._auth.principal(_token(request, envelope))
        principal.authorise(host, envelope.handler, envelope.command)
        return principal

    async def _user_command(self, request: HttpRequest, envelope: Envelope) -> Reply:
        if envelope.command == "login":
            data = LoginData.model_validate(envelope.data)
            return Reply.ok(await self._login(data, _address(request)))
        if envelope.command == "logout":
            if self._auth is not None:
                self._auth.logout(_token(request, envelope))
            return Reply.ok({})
        raise UnknownCommand(
            f"{USER_HANDLER} has no command {envelope.command!r}; it has: login, logout", field="command"
        )

    async def _login(self, data: LoginData, address: str) -> dict:
        if self._auth is None:
            # no authentication at all (--insecure-open): legacy callers log in first and must not break
            return {"token": "", "expires_in": 0, "auth": "disabled"}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._login_pool, self._auth.login, data.username, data.password, address)

    def _respond(self, reply: Reply, envelope: Envelope | None, started: float, close: bool) -> JsonReply:
        self._metrics.observe(envelope, reply, time.perf_counter() - started)
        return JsonReply(encode_reply(reply), close)

    # -- probes, metrics, schema -------------------------------------------------

    async def healthz(self, request: HttpRequest) -> Response:
        status, body = health_answer(None)
        return JSONResponse(body, status_code=status)

    async def readyz(self, request: HttpRequest) -> Response:
        problem = await asyncio.get_running_loop().run_in_executor(None, self._probe.problem)
        status, body = health_answer(problem)
        return JSONResponse(body, status_code=status)

    async def metrics(self, request: HttpRequest) -> Response:
        body, content_type = self._metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(self, request: HttpRequest) -> Response:
        return Response(self._openapi, media_type=JSON_UTF8)

    def drain(self) -> None:
        self._forwarder.drain()

    def close(self) -> None:
        self._forwarder.close()
        self._hosts.close()
        self._login_pool.shutdown(wait=False, cancel_futures=True)
        self._lookup_pool.shutdown(wait=False, cancel_futures=True)


def _address(request: HttpRequest) -> str:
    return request.client.host if request.client else ""


def _token(request: HttpRequest, envelope: Envelope) -> str | None:
    return bearer_token(first_header(request.scope, b"authorization")) or envelope.token


class JsonReply:
    """A POST's answer as two ASGI messages, the headers Starlette's ``Response`` would send (``connection:
    close`` first when asked, then length and type), without building a ``Response`` for each request."""

    __slots__ = ("body", "close")
    TYPE = (b"content-type", JSON_UTF8.encode())
    CLOSE = (b"connection", b"close")

    def __init__(self, body: bytes, close: bool = False):
        self.body, self.close = body, close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = (b"content-length", str(len(self.body)).encode())
        headers = [self.CLOSE, length, self.TYPE] if self.close else [length, self.TYPE]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def create_app(
    settings: Settings,
    client: Client | None,
    users: Authenticator | None = None,
    commands: Sequence[Declared] | None = None,
    local: LocalToken | None = None,
    signer: Any = None,
) -> BridgeApp:
    """The bridge over ``client``. ``users`` defaults to the settings' users file; ``local`` is the token file's token.

    With neither, the bridge refuses to be built unless ``settings.insecure_open`` says so. ``commands`` (for
    ``/openapi.json`` and the metrics' labels) defaults to the worker's, as declared: no handler is built.
    Over plain ``amqp://`` the commands go through the event loop's own lane and ``client`` may be None (see
    ``bridge_client``), with ``signer`` then the one that signs them; any other broker needs the client.
    """
    signer = client.signer if client is not None else signer
    lane = LoopLane(settings.broker, signer) if usable(settings.broker) else None
    if lane is None and client is None:
        raise ValueError(f"the bridge over {mask_url(settings.broker)} forwards through a client, and none was given")
    commands = [*(worker_commands() if commands is None else commands), *bridge_commands()]
    auth = users or authenticator_from(settings, local)
    if auth is None:
        log.warning("--insecure-open: the bridge accepts every caller without a token")
    metrics = BridgeMetrics(lambda: [(c.handler, c.name) for c in commands])
    bridge = Bridge(
        Forwarder(client, settings.timeout, lane=lane),
        settings.host_for_bridge,
        settings.max_body,
        auth,
        metrics,
        BrokerProbe(settings.broker),
        build_openapi(commands),
        HostDirectory(
            settings.broker_url, frozenset(settings.allowed_hosts) if settings.allowed_hosts is not None else None
        ),
        settings.body_timeout,
    )
    streams = event_streams(settings.broker, signer, auth, metrics.registry)  # GET /events (§7)
    app = Starlette(
        routes=[*_routes(bridge), Route("/events", streams.get, methods=["GET"])], lifespan=_closing(bridge, streams)
    )
    app.state.bridge = bridge
    app.state.events = streams
    return BridgeApp(app, settings.server_names)


@contextlib.contextmanager
def bridge_client(settings: Settings, signer: Any) -> Iterator[Client | None]:
    """What the bridge's CLIs forward through: None over plain ``amqp://``, where the event loop's lane publishes
    and reads the replies itself (a client would hold two connections, a reply queue and a thread unused);
    otherwise (Redis, ``memory://``, TLS) a client, closed on leaving."""
    if usable(settings.broker):
        yield None
        return
    with Client(settings.broker, signer=signer, declare_host_queues=False) as client:
        yield client


class BridgeApp:
    """The ASGI application: ``RequestGuard`` first, then the two POST paths straight to their endpoints.

    Every legacy call is a ``POST /`` or ``POST /hosts/<host>``: those skip Starlette's router and its two
    exception middlewares (``Bridge.post`` makes every failure a reply itself). Everything else (probes,
    metrics, OpenAPI, the lifespan, another method or path) goes to the Starlette app, which has the same two
    routes, so that a ``GET /`` is still a 405.
    """

    def __init__(self, app: Starlette, server_names: Iterable[str] | None):
        self.state = app.state
        self._app = app
        self._bridge: Bridge = app.state.bridge
        self._guarded = RequestGuard(self._route, server_names=server_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guarded(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else None
        host = path[len(HOSTS_PREFIX) :] if path and path.startswith(HOSTS_PREFIX) else None
        if path == "/":
            response = await self._bridge.post_default(HttpRequest(scope, receive))
        elif host and "/" not in host:
            scope["path_params"] = {"host": host}
            response = await self._bridge.post_host(HttpRequest(scope, receive))
        else:
            await self._app(scope, receive, send)
            return
        await response(scope, receive, send)


def _closing(bridge: Bridge, streams: EventStreams):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        bridge.close()
        streams.close()

    return lifespan


class NoAuthentication(Exception):
    """Neither a users file nor a token file, and ``insecure_open`` not set: the bridge does not start."""


def authenticator_from(settings: Settings, local: LocalToken | None = None) -> Authenticator | None:
    users = UsersFile(settings.users_file) if settings.users_file is not None else None
    if users is None and local is None:
        if settings.insecure_open:
            return None
        raise NoAuthentication(
            "the bridge needs --users FILE or --token-file PATH (or, only behind a proxy that authenticates,"
            " --insecure-open)"
        )
    return Authenticator(users, TokenStore(settings.token_ttl), Throttle(), local=local)


def _routes(bridge: Bridge) -> Iterable[Route]:
    return [
        Route("/", bridge.post_default, methods=["POST"]),
        Route(HOSTS_PREFIX + "{host}", bridge.post_host, methods=["POST"]),
        Route("/healthz", bridge.healthz, methods=["GET"]),
        Route("/readyz", bridge.readyz, methods=["GET"]),
        Route("/metrics", bridge.metrics, methods=["GET"]),
        Route("/openapi.json", bridge.openapi, methods=["GET"]),
    ]
