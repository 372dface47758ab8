"""What a web browser could send on a page's behalf is refused before anything else runs.

A page on another site can make the operator's browser POST to ``http://127.0.0.1:8080/`` (CSRF),
or resolve its own name to 127.0.0.1 and then talk to the bridge as if same-origin (DNS rebinding).
Three checks close that, on every request:

- ``Host``: a name other than an IP address, ``localhost`` or a ``server_names`` entry is refused
  (DNS rebinding sends the attacker's name): HTTP 421, ``20001`` with ``field: header.host``.
- ``Origin`` and ``Sec-Fetch-Site``: an origin other than the bridge's own (``Origin: null`` too), or a
  browser's ``cross-site``/``same-site``, is refused: HTTP 403, ``20004`` with ``field: header.origin``.
- ``Content-Type`` of a POST: anything but none or JSON is refused, because ``text/plain`` and the form
  types are what a page may send to another site without a preflight: HTTP 415, ``20001`` with
  ``field: header.content-type``.

These answers are not contract replies (a legacy caller never sends them), so they carry an HTTP
error status; the body is still ``{code, msg, data}``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from kvmworker.protocol.codec import encode_reply
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply

JSON_UTF8 = b"application/json; charset=utf-8"


JUDGED = {b"host": "host", b"origin": "origin", b"sec-fetch-site": "sec-fetch-site", b"content-type": "content-type"}
KNOWN_HOSTS_MAX = 1024  # Host header values judged and remembered; callers choose them, so the memory is bounded


class RequestGuard:
    def __init__(self, app: ASGIApp, server_names: Iterable[str] | None = None):
        self.app = app
        names = [n.lower().rstrip(".") for n in (server_names or ())]
        self._any_name = "*" in names
        self._names = frozenset(n for n in names if not n.startswith("*."))
        self._suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # "*.svc" → ".svc"
        self._host_verdicts: dict[str, bool] = {}  # every request asks again for the same few Host values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self.refusal(scope["method"], headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reply = refusal
        body = encode_reply(reply)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_UTF8),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, method: str, headers: dict[str, str]) -> tuple[int, Reply] | None:
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            detail = (
                f"Host {host[:100]!r} is not a name of this bridge (an IP address, localhost, or --server-names);"
                " a page that rebinds its own DNS name to this address is refused"
            )
            return 421, Reply.error(Code.INVALID_REQUEST, detail, field="header.host")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            detail = f"cross-origin requests are refused (Origin {origin[:100]!r} is not this bridge)"
            return 403, Reply.error(Code.UNAUTHENTICATED, detail, field="header.origin")
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, Reply.error(
                Code.UNAUTHENTICATED, "requests a browser makes for another site are refused", field="header.origin"
            )
        if method == "POST" and not json_or_none(headers.get("content-type")):
            detail = (
                f"Content-Type {headers['content-type'][:100]!r} is refused: send application/json (or no"
                " Content-Type); text/plain and form types are what web pages can send to other sites"
            )
            return 415, Reply.error(Code.INVALID_REQUEST, detail, field="header.content-type")
        return None

    def host_allowed(self, host_header: str) -> bool:
        verdict = self._host_verdicts.get(host_header)
        if verdict is None:
            if len(self._host_verdicts) >= KNOWN_HOSTS_MAX:
                self._host_verdicts.clear()
            verdict = self._host_verdicts[host_header] = self._judge_host(host_header)
        return verdict

    def _judge_host(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if name is None:
            return False
        if self._any_name or name == "localhost" or _is_ip(name) or name in self._names:
            return True
        return any(name.endswith(suffix) for suffix in self._suffixes)


def json_or_none(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json"))


def _headers(scope: Scope) -> dict[str, str]:
    """The headers the guard judges: the first of each name (a request with two Host headers is judged by the
    first); the others are not decoded at all."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = JUDGED.get(name)
        if key is not None and key not in found:
            found[key] = value.decode("latin-1")
    return found


def _host_name(host_header: str) -> str | None:
    """``name`` of ``name[:port]`` / ``[v6]:port``, lower-case; None when it is not a host at all."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _same_origin(origin: str, host_header: str | None) -> bool:
    if host_header is None or origin.strip().lower() == "null":
        return False
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = "80" if parts.scheme == "http" else "443"
    return _with_port(parts.netloc, default) == _with_port(host_header.strip().lower(), "80")


def _with_port(netloc: str, default: str) -> str:
    if netloc.startswith("["):
        return netloc if "]:" in netloc else f"{netloc}:{default}"
    return netloc if ":" in netloc else f"{netloc}:{default}"
