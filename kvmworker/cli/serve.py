"""``kvmworker serve``: worker and bridge in one process, on ``memory://`` unless ``--broker`` says otherwise.

The embedded default: on a fresh machine, one command and a POST works at once, for root only. At
start it writes a fresh bearer token to ``--token-file`` (default ``/run/kvmworker/token``, mode 0600)
and prints the ``curl`` that reads it; other local users cannot read it, and web pages cannot either.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from kvmworker.cli.bridge import BRIDGE_FLAGS, check_port_free, http_server
from kvmworker.cli.common import EXIT_OS, CliError, add_settings_flags, announce, settings_from, setup_logging
from kvmworker.cli.worker import WORKER_FLAGS
from kvmworker.protocol.urls import mask_url

log = logging.getLogger("kvmworker.serve")

EXAMPLE_BODY = '{"handler": "SystemHandler", "command": "ping", "data": {}}'
STOP_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the worker and the HTTP bridge in one process")
    add_settings_flags(parser, *dict.fromkeys((*WORKER_FLAGS, *BRIDGE_FLAGS)))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.bridge.app import bridge_client, create_app
    from kvmworker.bridge.tokenfile import DEFAULT_TOKEN_FILE, TokenFileError, create_token_file, remove_token_file
    from kvmworker.observability.attach import libvirt_problem
    from kvmworker.runtime import start_worker
    from kvmworker.trust.signing import load_signer

    settings = embedded(settings_from(args))
    setup_logging(settings)
    check_port_free(settings.bind, settings.port)
    try:
        local = None if settings.insecure_open else create_token_file(settings.token_file or DEFAULT_TOKEN_FILE)
    except (OSError, TokenFileError) as exc:
        raise CliError(f"cannot write the token file ({exc}); choose one with --token-file", EXIT_OS) from None
    try:
        try:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create the state directory {settings.state_dir}: {exc.strerror}", EXIT_OS) from None
        running = start_worker(settings)
        libvirt = libvirt_problem(running.assembly.libvirt_probe)
        if libvirt:
            log.warning("%s", libvirt)
        try:
            signer = load_signer(settings)
            with bridge_client(settings, signer) as client:
                app = create_app(settings, client, local=local, signer=signer)
                server = http_server(app, settings)
                token = str(local.path) if local is not None else None
                announce(settings, banner(server.url, settings, local, libvirt), url=server.url, token_file=token)
                server.run()
        finally:
            running.stop(STOP_TIMEOUT_S)
    finally:
        if local is not None:
            remove_token_file(local)
    return 0


def embedded(settings: Any) -> Any:
    """The bridge's default host is this worker, so that a POST without any header reaches it."""
    return settings.model_copy(update={"default_host": settings.default_host or settings.host})


def banner(url: str, settings: Any, local: Any, libvirt_problem: str | None = None) -> str:
    auth = f'-H "Authorization: Bearer $(cat {local.path})" ' if local is not None else ""
    token = (
        f"token: {local.path} (mode 0600: root only; a new one at every start)"
        if local is not None
        else "token: none (--insecure-open): ANY local user or web page can command this host"
    )
    lines = [
        f"kvmworker serve: worker for host {settings.host!r} on {mask_url(settings.broker)}, bridge on {url}",
        token,
        f"try:  curl -s {url}/ -H 'Content-Type: application/json' {auth}-d '{EXAMPLE_BODY}'",
        f"or:   kvmworker call --url {url}/ {settings.host} SystemHandler ping"
        + (f' --token "$(cat {local.path})"' if local is not None else ""),
        f"events: kvmworker events --url {url}/" + (f" --token-file {local.path}" if local is not None else ""),
    ]
    if libvirt_problem:
        lines.append(f"warning: {libvirt_problem}")
    return "\n".join(lines)
