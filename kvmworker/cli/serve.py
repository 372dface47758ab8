"""``kvmworker serve``: worker and bridge in one process, on ``memory://`` unless ``--broker`` says otherwise.

The embedded default: on a fresh machine, one command and a POST works at once.
"""

from __future__ import annotations

import argparse
import logging

from kvmworker.bridge.app import create_app
from kvmworker.bridge.server import BridgeServer
from kvmworker.cli.bridge import BRIDGE_FLAGS
from kvmworker.cli.common import add_settings_flags, settings_from, setup_logging
from kvmworker.cli.worker import WORKER_FLAGS
from kvmworker.client import Client
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.trust.signing import load_signer

log = logging.getLogger("kvmworker.serve")

EXAMPLE_BODY = '{"handler": "SystemHandler", "command": "ping", "data": {}}'
STOP_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the worker and the HTTP bridge in one process")
    add_settings_flags(parser, *dict.fromkeys((*WORKER_FLAGS, *BRIDGE_FLAGS)))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = embedded(settings_from(args))
    setup_logging(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    running = start_worker(settings)
    try:
        with Client(settings.broker_url, signer=load_signer(settings)) as client:
            app = create_app(settings, client, registry=running.dispatcher.registry)
            server = BridgeServer(app, settings.bind, settings.port, settings.log_level)
            print(banner(server.url, settings), flush=True)
            server.run()
    finally:
        running.stop(STOP_TIMEOUT_S)
    return 0


def embedded(settings: Settings) -> Settings:
    """The bridge's default host is this worker, so that a POST without any header reaches it."""
    return settings.model_copy(update={"default_host": settings.default_host or settings.host})


def banner(url: str, settings: Settings) -> str:
    return (
        f"kvmworker serve: worker for host {settings.host!r} on {settings.broker_url}, bridge on {url}\n"
        f"try:  curl -s -X POST {url}/ -H 'Content-Type: application/json' -d '{EXAMPLE_BODY}'"
    )
