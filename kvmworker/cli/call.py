"""``kvmworker call HOST HANDLER COMMAND``: send one command, print the reply.

Over the broker (``--broker``), or over HTTP to a running ``serve`` or ``bridge`` (``--url``). Exit codes:
0 the reply's code is 0, 1 another code, 2 outcome unknown (-1), 64 usage, 69 broker or bridge unreachable.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from kvmworker.cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_OUTCOME,
    EXIT_USAGE,
    CliError,
    add_settings_flags,
    broker_reachable,
    json_object,
    print_json,
    refuse_lonely_memory,
    settings_from,
    setup_logging,
)

OK, UNKNOWN_OUTCOME = 0, -1  # kvmworker.protocol.codes, without importing pydantic for --help
HTTP_SLACK_S = 5.0  # the bridge answers -1 itself after the timeout; wait a little longer than it


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("call", help="send one command and print the reply")
    parser.add_argument("target_host", metavar="HOST")
    parser.add_argument("handler", metavar="HANDLER")
    parser.add_argument("command", metavar="COMMAND")
    parser.add_argument("--data", type=json_object, default={}, help="the command's data, a JSON object")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the plan; change nothing")
    parser.add_argument("--msg-id", type=_uuid, default=None, help="idempotency key (a UUID); generated when absent")
    add_settings_flags(parser, "broker", "url", "token", "token-file", "timeout", "keys-file", "trusted-keys-file")
    parser.set_defaults(run=run)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    envelope = {
        "handler": args.handler,
        "command": args.command,
        "data": args.data,
        "dry_run": args.dry_run,
        "msg_id": args.msg_id,
    }
    if settings.url:
        reply = call_over_http(settings.url, args.target_host, envelope, settings.timeout, bearer_token(settings))
    else:
        reply = call_over_broker(settings, args.target_host, envelope)
    print_json(reply)
    return exit_status(reply.get("code"))


def call_over_broker(settings: Any, host: str, envelope: dict[str, Any]) -> dict[str, Any]:
    with caller_for(settings, "call") as client:
        reply = client.call(host, **envelope, timeout=settings.timeout)
    return reply.model_dump(mode="json")


def call_over_http(
    url: str, host: str, envelope: dict[str, Any], timeout: float, token: str | None = None
) -> dict[str, Any]:
    """POST the envelope to ``<url>/hosts/<host>``: the bridge answers every POST with ``{code, msg, data}``."""
    import urllib.error
    import urllib.parse
    import urllib.request  # here, not at the top: it brings ssl and email, which --help does not need

    body = json.dumps({**{k: v for k, v in envelope.items() if v is not None}, "timeout": timeout})
    target = url.rstrip("/") + "/hosts/" + urllib.parse.quote(host, safe="")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(target, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout + HTTP_SLACK_S) as response:
            return _reply_of(response.read(), target)
    except urllib.error.HTTPError as exc:
        # the bridge answers 200; another status is something else at that address (a proxy, a typo)
        text = exc.read().decode(errors="replace").strip()
        try:
            return _reply_of(text.encode(), target)
        except CliError:
            raise CliError(f"{target} answered HTTP {exc.code}: {text[:200]}", EXIT_UNAVAILABLE) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return {"code": UNKNOWN_OUTCOME, "msg": f"no answer from {target} within {timeout:g} s", "data": {}}
        raise CliError(f"cannot reach the bridge at {target}: {reason}", EXIT_UNAVAILABLE) from None


class HttpCaller:
    """``Client.call``'s shape over HTTP to a bridge, for commands that take either (replay --url)."""

    def __init__(self, url: str, token: str | None = None):
        self._url, self._token = url, token

    def __enter__(self) -> HttpCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def call(
        self,
        host: str,
        handler: str,
        command: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        dry_run: bool = False,
        msg_id: str | None = None,
    ) -> Any:  # a Reply
        from kvmworker.protocol.envelope import Reply

        envelope = {"handler": handler, "command": command, "data": data or {}, "dry_run": dry_run, "msg_id": msg_id}
        return Reply.model_validate(call_over_http(self._url, host, envelope, timeout, self._token))


def bearer_token(settings: Any) -> str | None:
    """``--token``; else the file a bridge wrote its token into (``--token-file``, or ``serve``'s default when this
    user may read it: root on the machine that runs ``serve``)."""
    if settings.token:
        return settings.token
    from kvmworker.bridge.tokenfile import DEFAULT_TOKEN_FILE

    path = getattr(settings, "token_file", None) or DEFAULT_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        if getattr(settings, "token_file", None):
            raise CliError(f"cannot read the token file {path}: {exc.strerror}", EXIT_USAGE) from None
        return None


def caller_for(settings: Any, command: str) -> Any:
    """What sends commands for ``command``: the bridge at --url, else a Client on a broker that can be reached
    (memory:// with nobody in this process and an unreachable broker are one-line errors)."""
    if settings.url:
        return HttpCaller(settings.url, bearer_token(settings))
    refuse_lonely_memory(settings.broker, command)
    broker_reachable(settings.broker)
    from kvmworker.client import Client
    from kvmworker.trust.signing import load_signer

    return Client(settings.broker, signer=load_signer(settings))


def _reply_of(body: bytes, target: str) -> dict[str, Any]:
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "code" not in reply:
        raise CliError(f"{target} did not answer with a kvmworker reply: {body[:200]!r}", EXIT_UNAVAILABLE)
    return reply


def exit_status(code: Any) -> int:
    """0 success, 2 outcome unknown (-1), 1 any other error code."""
    if code == OK:
        return EXIT_OK
    return EXIT_UNKNOWN_OUTCOME if code == UNKNOWN_OUTCOME else EXIT_ERROR_REPLY
