"""``kvmworker bridge``: the HTTP bridge alone, in front of the workers on a broker.

It needs a way to tell callers apart: ``--users FILE`` (logins, per-user grants), ``--token-file PATH``
(one bearer token written at start, 0600), or both. Without either it does not start, unless
``--insecure-open`` says that something in front of it authenticates.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from kvmworker.cli.common import (
    EXIT_OS,
    EXIT_USAGE,
    CliError,
    add_settings_flags,
    announce,
    settings_from,
    setup_logging,
)
from kvmworker.protocol.urls import mask_url

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
    "trusted-keys-file",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bridge", help="run the HTTP bridge for legacy callers")
    add_settings_flags(parser, *BRIDGE_FLAGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.bridge.app import NoAuthentication, bridge_client, create_app
    from kvmworker.bridge.tokenfile import TokenFileError, create_token_file, remove_token_file
    from kvmworker.trust.signing import load_signer

    settings = settings_from(args)
    setup_logging(settings)
    check_port_free(settings.bind, settings.port)
    try:
        local = create_token_file(settings.token_file) if settings.token_file else None
    except (OSError, TokenFileError) as exc:
        raise CliError(f"cannot write the token file: {exc}", EXIT_OS) from None
    try:
        signer = load_signer(settings)
        with bridge_client(settings, signer) as client:
            try:
                app = create_app(settings, client, local=local, signer=signer)
            except NoAuthentication as exc:
                raise CliError(str(exc), EXIT_USAGE) from None
            server = http_server(app, settings)
            broker = mask_url(settings.broker)
            log.info("bridge on %s over %s; default host %s", server.url, broker, settings.host_for_bridge)
            token = f"\ntoken: {local.path}" if local is not None else ""
            token_file = str(local.path) if local is not None else None
            announce(
                settings, f"kvmworker bridge listening on {server.url}{token}", url=server.url, token_file=token_file
            )
            server.run()
    finally:
        if local is not None:
            remove_token_file(local)
    return 0


def check_port_free(bind: str, port: int) -> None:
    """Before anything else starts: a port in use is a one-line error (exit 71), not a traceback."""
    if port == 0:
        return
    import socket

    from kvmworker.bridge.server import bind_socket

    sock: socket.socket | None = None
    try:
        sock = bind_socket(bind, port)
    except OSError as exc:
        raise port_error(bind, port, exc) from None
    finally:
        if sock is not None:
            sock.close()


def http_server(app: Any, settings: Any) -> Any:
    """The BridgeServer (which binds its socket at once), or the one-line error if it cannot."""
    from kvmworker.bridge.server import BridgeServer, Limits

    try:
        return BridgeServer(app, settings.bind, settings.port, settings.log_level, Limits.from_settings(settings))
    except OSError as exc:
        raise port_error(settings.bind, settings.port, exc) from None


def port_error(bind: str, port: int, exc: OSError) -> CliError:
    return CliError(f"cannot listen on {bind}:{port}: {exc.strerror or exc} (see --port, --bind)", EXIT_OS)
