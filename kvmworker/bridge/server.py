"""uvicorn on a socket bound before it starts, so that port 0 works and the real port is known at once."""

from __future__ import annotations

import signal
import socket
import threading

import uvicorn
from starlette.applications import Starlette

STARTUP_TIMEOUT_S = 10.0


class BridgeServer:
    def __init__(self, app: Starlette, bind: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.socket = bind_socket(bind, port)
        # log_config=None: uvicorn's lines go through the process's own logging (setup_logging), so they are
        # JSON with --log-json and masked like every other line; its access log only at DEBUG
        level = log_level.lower()
        config = uvicorn.Config(
            app, log_level=level, log_config=None, access_log=level == "debug", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
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
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()


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
