"""The worker's small HTTP port for Kubernetes: ``/healthz`` (alive), ``/readyz`` (consuming), ``/metrics``.

stdlib only, one thread per request: probes and scrapes are a few a minute, and the worker must
not need a web framework to be observable.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from kvmworker.observability.health import health_answer

log = logging.getLogger("kvmworker.health")

# (healthy?, the reason shown when it is not)
Check = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, port: int, bind: str, *, alive: Check, ready: Check, registry: CollectorRegistry):
        routes = {
            "/healthz": lambda: _check_response(alive),
            "/readyz": lambda: _check_response(ready),
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
        }
        self._server = ThreadingHTTPServer((bind, port), _handler_class(routes))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kvmworker-health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health and metrics on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


Response = tuple[int, str, bytes]


def _check_response(check: Check) -> Response:
    ok, reason = check()
    status, body = health_answer(None if ok else reason)
    return status, "application/json", json.dumps(body).encode()


def _handler_class(routes: dict[str, Callable[[], Response]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes every few seconds would drown the command log.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
