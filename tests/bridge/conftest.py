"""A real bridge: uvicorn on a loopback port, over the parametrised broker, in front of a real worker.

Without an ``Authenticator`` the bridge gets a local token (as ``kvmworker serve`` does) and the
test's HTTP client sends it; ``RunningBridge.anonymous`` is a client without it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from kvmworker.bridge.app import create_app
from kvmworker.bridge.auth import Authenticator, LocalToken
from kvmworker.bridge.server import BridgeServer, Limits
from kvmworker.client import Client
from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.settings import Settings


@dataclass
class RunningBridge:
    url: str
    http: httpx.Client
    settings: Settings
    token: str = ""
    server: BridgeServer | None = None

    def post(self, body: object, path: str = "/", **kwargs) -> httpx.Response:
        return self.http.post(self.url + path, json=body, **kwargs)

    def call(self, handler: str, command: str, data: dict | None = None, **extra) -> dict:
        response = self.post({"handler": handler, "command": command, "data": data or {}, **extra})
        assert response.status_code == 200, response.text
        return response.json()

    def anonymous(self) -> httpx.Client:
        return httpx.Client(timeout=30)


@contextmanager
def serving(
    settings: Settings,
    authenticator: Authenticator | None = None,
    registry: HandlerRegistry | None = None,
    limits: Limits | None = None,
) -> Iterator[RunningBridge]:
    token = "" if authenticator is not None or settings.insecure_open else secrets.token_urlsafe(32)
    local = LocalToken(token, "(test)") if token else None
    with Client(settings.broker_url, declare_host_queues=False) as client:
        # the bridge lists what the worker in front of it runs; without one, the worker's commands as declared
        commands = list(registry.commands()) if registry is not None else None
        app = create_app(settings, client, authenticator, commands, local=local)
        server = BridgeServer(app, "127.0.0.1", 0, limits=limits)
        server.start()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with httpx.Client(timeout=30, headers=headers) as http:
                yield RunningBridge(server.url, http, settings, token, server)
        finally:
            server.stop()
            app.state.bridge.close()


@pytest.fixture
def bridge_settings(worker_settings: Settings) -> Settings:
    return worker_settings.model_copy(update={"default_host": worker_settings.host, "timeout": 10.0})


@pytest.fixture
def bridge(bridge_settings: Settings, running_worker) -> Iterator[RunningBridge]:
    with serving(bridge_settings, registry=running_worker.pipeline.registry) as running:
        yield running


@pytest.fixture
def make_bridge() -> Callable[..., object]:
    return serving
