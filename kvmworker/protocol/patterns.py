"""Regular expressions that mean the same to the worker (Python ``re``) and to any JSON Schema validator.

JSON Schema's ``pattern`` is an ECMA-262 regular expression that is *searched*, not matched, and Python's
``re`` (which the ``jsonschema`` package uses) lets ``$`` match before a final newline. So every published
pattern is written with ``schema_pattern``: ``^(?:…)$(?!\\n)`` means "the whole string" in both dialects.
The worker checks the very same expression with ``re.fullmatch``. Only constructs both dialects share are
used: character classes, groups, alternation, counted repetition and one negative look-ahead.
"""

from __future__ import annotations

import re

END = r"$(?!\n)"


def schema_pattern(body: str) -> str:
    """``body`` anchored at both ends, for JSON Schema's ``pattern`` (see the module's docstring)."""
    return f"^(?:{body}){END}"


def fullmatch(body: str) -> re.Pattern[str]:
    """The worker's side of a published pattern."""
    return re.compile(f"(?:{body})")


def case_insensitive(word: str) -> str:
    """``flat`` → ``[fF][lL][aA][tT]``: JSON Schema patterns have no flags."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def decimal_range(lo: int, hi: int) -> str:
    """The decimal numbers lo..hi (0 <= lo <= hi), written without leading zeros."""
    if not 0 <= lo <= hi:
        raise ValueError(f"bad range {lo}..{hi}")
    parts = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        first = max(lo, 10 ** (width - 1) if width > 1 else 0)
        last = min(hi, 10**width - 1)
        if first <= last:
            parts.extend(_same_width(str(first), str(last)))
    return "|".join(parts)


def _same_width(a: str, b: str) -> list[str]:
    """Numbers a..b of the same width: a common first digit, or a low part, a middle run and a high part."""
    if a == b:
        return [a]
    rest = len(a) - 1
    if rest == 0:
        return [f"[{a}-{b}]"]
    if a[0] == b[0]:
        return [a[0] + _group(_same_width(a[1:], b[1:]))]
    low, high = int(a[0]), int(b[0])
    parts = []
    if a[1:] != "0" * rest:
        parts.append(a[0] + _group(_same_width(a[1:], "9" * rest)))
        low += 1
    top = None
    if b[1:] != "9" * rest:
        top = b[0] + _group(_same_width("0" * rest, b[1:]))
        high -= 1
    if low <= high:
        digit = str(low) if low == high else f"[{low}-{high}]"
        parts.append(f"{digit}[0-9]" + (f"{{{rest}}}" if rest > 1 else ""))
    if top:
        parts.append(top)
    return parts


def _group(alternatives: list[str]) -> str:
    if len(alternatives) == 1 and "|" not in alternatives[0]:
        return alternatives[0]
    return f"(?:{'|'.join(alternatives)})"


_OCTET = decimal_range(0, 255)
IPV4 = rf"(?:{_OCTET})(?:\.(?:{_OCTET})){{3}}"
_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = f"(?:{_H16}:{_H16}|{IPV4})"


def _ipv6() -> str:
    """RFC 3986's IPv6address, which is what Python's ``ipaddress`` reads (no zone id)."""

    def head(n: int) -> str:  # up to n groups before "::"
        return "" if n < 0 else f"(?:(?:{_H16}:){{0,{n}}}{_H16})?" if n else f"(?:{_H16})?"

    forms = [
        f"(?:{_H16}:){{6}}{_LS32}",
        f"::(?:{_H16}:){{5}}{_LS32}",
        f"{head(0)}::(?:{_H16}:){{4}}{_LS32}",
        f"{head(1)}::(?:{_H16}:){{3}}{_LS32}",
        f"{head(2)}::(?:{_H16}:){{2}}{_LS32}",
        f"{head(3)}::{_H16}:{_LS32}",
        f"{head(4)}::{_LS32}",
        f"{head(5)}::{_H16}",
        f"{head(6)}::",
    ]
    return "|".join(f"(?:{form})" for form in forms)


IPV6 = _ipv6()
CIDR = rf"(?:{IPV4})/(?:{decimal_range(0, 32)})|(?:{IPV6})/(?:{decimal_range(0, 128)})"
"""An address with its prefix length: ``10.0.0.1/24``, ``fd00::1/64``."""

UUID = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
"""The RFC 4122 text form, in either case: what JSON Schema's ``format: uuid`` means."""
