"""``kvmworker bridge``: the HTTP bridge alone, in front of the workers on a broker."""

from __future__ import annotations

import argparse
import logging

from kvmworker.bridge.app import create_app
from kvmworker.bridge.server import BridgeServer
from kvmworker.cli.common import add_settings_flags, settings_from, setup_logging
from kvmworker.client import Client
from kvmworker.trust.signing import load_signer

log = logging.getLogger("kvmworker.bridge")

BRIDGE_FLAGS = (
    "broker",
    "port",
    "bind",
    "default-host",
    "allowed-hosts",
    "users",
    "timeout",
    "max-body",
    "token-ttl",
    "keys-file",
    "trusted-keys-file",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bridge", help="run the HTTP bridge for legacy callers")
    add_settings_flags(parser, *BRIDGE_FLAGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    with Client(settings.broker_url, signer=load_signer(settings)) as client:
        server = BridgeServer(create_app(settings, client), settings.bind, settings.port, settings.log_level)
        log.info("bridge on %s over %s; default host %s", server.url, settings.broker_url, settings.host_for_bridge)
        print(f"kvmworker bridge listening on {server.url}", flush=True)
        server.run()
    return 0
