"""uvicorn on a socket bound before it starts, so that port 0 works and the real port is known at once.

Slow and idle clients cannot starve it (``GuardedHttpProtocol``): a request's headers must arrive
within ``header_timeout`` and stay under ``MAX_HEADER_BYTES``; idle keep-alive connections are closed
after ``KEEP_ALIVE_S``; at most ``max_connections`` are open (and never more than the file descriptor
limit allows), and when that many are, a new connection pushes out the oldest one that has not yet
sent its headers, so that ``/healthz`` still answers while 200 clients trickle. The body's own time
limit is in ``body.py``. ``X-Forwarded-For`` is believed only from ``forwarded_allow_ips`` (default:
nobody), so that a local caller cannot pose as another address to the login throttle.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kvmworker.settings import Settings

STARTUP_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 64 * 1024
SPARE_FDS = 64  # for the broker connections, log files and the pools around the HTTP server


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1000
    header_timeout: float = 10.0
    forwarded_allow_ips: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_connections, settings.header_timeout, tuple(settings.forwarded_allow_ips or ()))

    def connection_cap(self) -> int:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(8, min(self.max_connections, soft - SPARE_FDS))


class BridgeServer:
    def __init__(
        self,
        app: Starlette,
        bind: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        limits: Limits | None = None,
    ):
        limits = limits or Limits()
        self.socket = bind_socket(bind, port)
        # log_config=None: uvicorn's lines go through the process's own logging (setup_logging), so they are
        # JSON with --log-json and masked like every other line; its access log only at DEBUG
        level = log_level.lower()
        config = uvicorn.Config(
            app,
            log_level=level,
            log_config=None,
            access_log=level == "debug",
            timeout_graceful_shutdown=5,
            http=guarded_protocol(limits.connection_cap(), limits.header_timeout),
            timeout_keep_alive=KEEP_ALIVE_S,
            proxy_headers=bool(limits.forwarded_allow_ips),
            forwarded_allow_ips=list(limits.forwarded_allow_ips) or "",
        )
        self._server = _Server(config, on_exit=lambda: drain(app))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """In the foreground until SIGINT/SIGTERM (uvicorn installs its handlers on the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            self._server.run(sockets=[self.socket])
            return
        # uvicorn raises the signal it caught again once it has shut down; with the default handler
        # that would kill the process before the caller's own clean-up (the embedded worker's stop)
        previous = {sig: signal.signal(sig, _replayed) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._server.run(sockets=[self.socket])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self) -> None:
        """On a thread of its own (tests, the embedded mode's callers); ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.run, name="kvmworker-bridge-http", daemon=True)
        self._thread.start()
        if not _wait(lambda: self._server.started or not self._thread.is_alive(), STARTUP_TIMEOUT_S):
            raise RuntimeError("the bridge's HTTP server did not start")
        if not self._server.started:
            raise RuntimeError("the bridge's HTTP server failed to start; see its log")

    def stop(self, timeout: float = 10.0) -> None:
        drain(self._server.config.app)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells the app the moment a stop signal arrives: requests still waiting for a
    worker are answered -1 at once rather than cut off when the graceful shutdown's time is up."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def drain(app: object) -> None:
    """Tell a bridge app that its server is stopping (see ``Forwarder.drain``); any other app: nothing to do."""
    bridge = getattr(getattr(app, "state", None), "bridge", None)
    if bridge is not None:
        bridge.drain()
    streams = getattr(getattr(app, "state", None), "events", None)
    if streams is not None:
        streams.drain()  # GET /events streams end now, not at the graceful shutdown's deadline


def _replayed(signum: int, frame: object) -> None:
    """The signal uvicorn already acted on: nothing more to do."""


def bind_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted sockets: without it a small response waits ~40 ms for the caller's delayed ACK
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((bind, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _wait(condition, timeout: float) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return condition()


class CoalescingTransport:
    """What is written in one turn of the event loop goes out in one ``send``.

    uvicorn writes a response's status line and headers, then its body, each at once: with ``TCP_NODELAY``
    that is two system calls and two segments for every small reply. Held until the end of the current turn,
    they leave together; nothing waits longer than that (a ``100 Continue`` or a streamed chunk neither).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit and a connection cap; its
    writes coalesced (``CoalescingTransport``)."""

    max_connections = 1000
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self.waiting_since: float | None = self.loop.time()  # None once the headers are in
        self._header_bytes = 0
        self._begun = False  # a kept-alive connection's next request has begun, its headers not complete
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._too_slow)
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.waiting_since is not None and self._header_timer is None and self._begun:
            # a request begun in this data still lacks headers: its deadline runs from its first byte (a request
            # whose headers came whole, the usual case, never needed a timer)
            left = self.waiting_since + self.header_timeout - self.loop.time()
            self._header_timer = self.loop.call_later(max(left, 0), self._too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:  # the next request on a kept-alive connection: timed in data_received
            self.waiting_since = self.loop.time()
            self._begun = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self.waiting_since = None
        self._begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.waiting_since = self.loop.time()  # idle until the next request: first to go when full

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._stop_header_timer()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.waiting_since is not None and not self.transport.is_closing():
            self.logger.info("closing a connection from %s: no complete request headers in time", self.client)
            self.transport.close()

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if getattr(c, "waiting_since", None) is not None and c is not self]
        if not waiting:
            self.logger.warning("connection limit (%d) reached: refusing a new connection", self.max_connections)
            self.transport.close()
            return
        oldest = min(waiting, key=lambda c: c.waiting_since)
        self.logger.warning("connection limit (%d) reached: closing the longest-waiting idle one", self.max_connections)
        oldest.transport.close()
        self.connections.discard(oldest)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def guarded_protocol(max_connections: int, header_timeout: float) -> type[GuardedHttpProtocol]:
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"max_connections": max_connections, "header_timeout": header_timeout},
    )
