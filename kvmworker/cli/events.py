"""``kvmworker events [--host H] [--source S] [--json]``: follow the event stream (§7) until Ctrl-C.

Over the broker (a private queue bound to ``kvmworker.events``, or ``--queue NAME``: a durable one that keeps
collecting between runs), or over HTTP from a running ``serve``/``bridge`` (``--url``: its ``GET /events``).
One line per event; ``--json``: the event's body, one JSON object a line. Missed events (a skipped ``seq``)
are said where they were noticed: ``! gap …`` (``--json``: ``{"gap": true, …}``). ``--count N`` stops after N
events. Exit codes: 0 (``--count`` reached), 64 usage, 69 the broker or the bridge cannot be reached, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from kvmworker.cli.common import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    CliError,
    add_settings_flags,
    broker_reachable,
    refuse_lonely_memory,
    settings_from,
    setup_logging,
)

HTTP_READ_TIMEOUT_S = 60.0  # the bridge sends a keepalive every 15 s


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("events", help="follow the event stream: VMs, networks, links, the worker")
    parser.add_argument("--source", help="only this source: vm, network, link, operation, worker")
    parser.add_argument("--json", action="store_true", help="one JSON object a line (the event's body)")
    parser.add_argument("--count", type=_positive, default=None, help="stop after this many events")
    parser.add_argument(
        "--queue", default=None, help="a durable queue of this name: events wait there while nobody follows"
    )
    add_settings_flags(parser, "host", "broker", "url", "token", "token-file", "keys-file", "trusted-keys-file")
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    host = settings.host if "host" in settings.model_fields_set else None
    if args.source is not None and not args.source.isidentifier():
        raise CliError(f"--source {args.source}: one word, e.g. vm, network, link, worker")
    if settings.url:
        stream = over_http(settings, host, args.source)
    else:
        refuse_lonely_memory(settings.broker, "events")
        broker_reachable(settings.broker)
        stream = over_broker(settings, host, args.source, args.queue)
    shown = 0
    for item in stream:
        print(render(item, args.json), flush=True)
        if not item.get("gap"):
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    return EXIT_OK


def over_broker(settings: Any, host: str | None, source: str | None, queue: str | None) -> Iterator[dict[str, Any]]:
    from kvmworker.events.consumer import Gap, follow
    from kvmworker.trust.signing import load_signer

    for item in follow(settings.broker, host, source, queue=queue, signer=load_signer(settings)):
        yield item.to_dict() if isinstance(item, Gap) else item.model_dump(mode="json", exclude_none=True)


def over_http(settings: Any, host: str | None, source: str | None) -> Iterator[dict[str, Any]]:
    """The bridge's Server-Sent Events, read line by line (it finds the gaps itself)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from kvmworker.cli.call import bearer_token

    query = urllib.parse.urlencode({k: v for k, v in (("host", host), ("source", source)) if v})
    target = settings.url.rstrip("/") + "/events" + (f"?{query}" if query else "")
    headers = {"Accept": "text/event-stream"}
    token = bearer_token(settings)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(target, headers=headers), timeout=HTTP_READ_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()
        raise CliError(f"{target} answered HTTP {exc.code}: {_detail(text)}", EXIT_UNAVAILABLE) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the bridge at {target}: {reason}", EXIT_UNAVAILABLE) from None
    with response:
        yield from parse_sse(response)


def parse_sse(lines: Any) -> Iterator[dict[str, Any]]:
    """Server-Sent Events (bytes lines) → the JSON of each message's ``data``; comments and ids skipped."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def render(item: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    if item.get("gap"):
        if item.get("reset"):
            return f"! {item['host']}: its sequence started again (its state directory was lost?)"
        first, last = item["first"], item["last"]
        span = str(first) if first == last else f"{first}-{last}"
        return f"! gap: {item['host']} missed {last - first + 1} event(s), seq {span}"
    when = datetime.fromtimestamp(item["time"]).strftime("%Y-%m-%d %H:%M:%S")
    what = f"{item['source']}.{item['kind']}"
    text = f"{when}  {item['host']}  #{item['seq']}  {what}  {item['subject']}  {item['state']}"
    if item.get("reason"):
        text += f" ({item['reason']})"
    if item.get("previous"):
        text += f", was {item['previous']}"
    if item.get("msg_id"):
        text += f"  [msg {item['msg_id']}]"
    extra = {k: v for k, v in (item.get("data") or {}).items() if k not in ("vms", "networks", "degraded")}
    if item["state"] in ("online", "sync"):
        data = item.get("data") or {}
        text += f"  vms={len(data.get('vms') or {})} networks={len(data.get('networks') or {})}"
        if data.get("degraded"):
            text += f" degraded={','.join(sorted(data['degraded']))}"
    if extra:
        text += "  " + json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
    return text


def _detail(text: str) -> str:
    try:
        return json.loads(text)["data"]["detail"]
    except (ValueError, KeyError, TypeError):
        return text[:200]
