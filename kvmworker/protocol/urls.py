"""Passwords out of URLs before a URL is shown anywhere: logs, banners, replies, probes, error messages.

``mask_url`` is for a URL (or kombu's ``;``-separated list of them) that the program is about to show;
``mask_secrets`` is the same for free text that may hold URLs (an exception's message, a log line), and
is what the logging safety net runs on every record. The user name and the host stay readable.

Every repetition is bounded, so that a hostile message of one long word costs linear time.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ — the password runs to the last "@" before a "/", "?", "#" or whitespace, as
# kombu and urllib parse it (so a password with an unencoded "@" is masked whole). ``redis://:pw@host``
# has an empty user. ``redis://name@host`` has a user and no password: nothing to mask.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s/?#@:;]{0,256}:)(?P<password>[^\s/?#]{0,1024})@"
)
# ?password=… or &token=… in a query string
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&](?:password|passwd|pwd|pass|secret|token|access_token|api_key|apikey)=)(?P<value>[^&\s#;]{1,1024})"
)
# an HTTP Authorization value quoted in a message (the scheme as HTTP clients write it)
_BEARER = re.compile(r"\b(?P<head>Bearer\s{1,8})(?P<value>[A-Za-z0-9._~+/=\-]{1,2048})")


def mask_url(url: str) -> str:
    """``amqp://user:***@host//``: the password of every URL in ``url`` masked, the rest as written."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL it holds, secret query values and bearer tokens masked."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@" if m["password"] else m[0], text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m["head"] + MASK, text)
    return text
