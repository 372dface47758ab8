"""``kvmworker bridge``: the HTTP bridge alone, in front of the workers on a broker.

It needs a way to tell callers apart: ``--users FILE`` (logins, per-user grants), ``--token-file PATH``
(one bearer token written at start, 0600), or both. Without either it does not start, unless
``--insecure-open`` says that something in front of it authenticates.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvmworker.bridge.app import NoAuthentication, create_app
from kvmworker.bridge.server import BridgeServer, Limits
from kvmworker.bridge.tokenfile import TokenFileError, create_token_file, remove_token_file
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
    "token-file",
    "insecure-open",
    "server-names",
    "forwarded-allow-ips",
    "max-connections",
    "header-timeout",
    "body-timeout",
    "keys-file",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bridge", help="run the HTTP bridge for legacy callers")
    add_settings_flags(parser, *BRIDGE_FLAGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    try:
        local = create_token_file(settings.token_file) if settings.token_file else None
    except (OSError, TokenFileError) as exc:
        print(f"kvmworker bridge: cannot write the token file: {exc}", file=sys.stderr)
        return 2
    try:
        with Client(settings.broker_url, signer=load_signer(settings.keys_file), declare_host_queues=False) as client:
            try:
                app = create_app(settings, client, local=local)
            except NoAuthentication as exc:
                print(f"kvmworker bridge: {exc}", file=sys.stderr)
                return 2
            server = BridgeServer(app, settings.bind, settings.port, settings.log_level, Limits.from_settings(settings))
            log.info("bridge on %s over %s; default host %s", server.url, settings.broker_url, settings.host_for_bridge)
            token = f"\ntoken: {local.path}" if local is not None else ""
            print(f"kvmworker bridge listening on {server.url}{token}", flush=True)
            server.run()
    finally:
        if local is not None:
            remove_token_file(local)
    return 0
