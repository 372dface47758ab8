"""Secrets never reach the journal file: passwords, tokens, keys and signatures are masked at any depth.

A value is masked by the name of the key that holds it, so ``{"auth": {"password": ...}}`` and
``[{"api_key": ...}]`` are caught wherever they sit. Bodies that are not JSON are masked by pattern.
"""

from __future__ import annotations

import functools
import re
from typing import Any

MASK = "***"

# Substrings that make any key sensitive, and whole words (between _ - . or space) that do.
_SENSITIVE_PARTS = ("password", "passwd", "passphrase", "secret", "token", "credential", "authorization", "signature")
_SENSITIVE_WORDS = frozenset({"key", "keys", "pwd", "pass", "cookie", "apikey", "privkey"})
_WORD_SPLIT = re.compile(r"[_\-.\s]+")
# In text that is not JSON: ``password=...``, ``"token": "..."``, ``Bearer ...``.
# Every repetition is bounded: a hostile body of one long word must cost linear time, not quadratic.
_TEXT_SECRET = re.compile(
    r"""(?ix)
    (?P<name>["']?[\w.\-]{0,64}(?:pass(?:word|wd|phrase)?|pwd|secret|token|credential|authorization|signature|key)[\w\-]{0,64}["']?)
    (?P<sep>\s{0,8}[:=]\s{0,8})
    (?P<value>"(?:[^"\\]|\\.){0,4096}"|'[^']{0,4096}'|[^\s,;&}\]]+)
    """
)
_ANY_SECRET_WORD = re.compile(r"(?i)pass|pwd|secret|token|credential|authorization|signature|key")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+")
# An XML attribute (``<graphics passwd='...'>``): any value length, one quantifier each, so linear time.
_XML_ATTRIBUTE = re.compile(r"""(?P<name>[\w:.\-]{1,64})(?P<sep>\s{0,8}=\s{0,8})(?P<value>"[^"]*"|'[^']*')""")


# Whatever ``redact`` could change in a JSON text holds one of these in the text lowered as ``is_sensitive``
# lowers keys (a secret key's name, Bearer/Basic, a secret XML attribute), or a \\u escape that could spell one.
_SECRET_MARKS = (
    "pass", "pwd", "secret", "token", "credential", "authorization", "signature", "key", "cookie", "bearer", "basic",
    "\\u",
)  # fmt: skip
# Letters that the patterns' IGNORECASE takes for an ASCII letter of those words, though ``lower()`` does not.
_FOLDED_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")  # İ ı ſ K(elvin)


def may_hold_secret(json_text: str) -> bool:
    """False when ``redact`` would leave the value of ``json_text`` as it is (it may say True when it would too).

    Substring tests, not a pattern: this runs on every message's envelope, properties and reply (a loop, not
    ``any()`` over a generator: half the cost)."""
    if not json_text.isascii():  # common (a reply's own ``msg`` is not ASCII)
        for letter in _FOLDED_TO_ASCII:
            if letter in json_text:
                return True
        # The rest lowers to no ASCII letter (only those four could make one): a mark is a run of ASCII letters
        # here as in the text, and searched for in a narrow string, twice as fast. Runs the dropped letters
        # separated may join into a mark: True, which is allowed.
        json_text = json_text.encode("ascii", "ignore").decode("ascii")
    lowered = json_text.lower()
    for mark in _SECRET_MARKS:  # noqa: SIM110 (a loop, not any() over a generator: it runs per message)
        if mark in lowered:
            return True
    return False


@functools.lru_cache(maxsize=4096)  # the same few dozen key names come by on every message
def is_sensitive(key: object) -> bool:
    name = str(key).lower()
    if any(part in name for part in _SENSITIVE_PARTS):
        return True
    return any(word in _SENSITIVE_WORDS for word in _WORD_SPLIT.split(name))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every sensitive key's value masked (the input is not changed)."""
    if isinstance(value, dict):
        return {k: MASK if is_sensitive(k) and v is not None else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_xml(_BEARER.sub(lambda m: f"{m.group(1)} {MASK}", value))
    return value


def redact_xml(text: str) -> str:
    """Secrets inside XML a value carries (VNC/SPICE ``passwd=`` of domain XML): attributes with a secret name."""
    if "<" not in text or not _ANY_SECRET_WORD.search(text):
        return text
    return _XML_ATTRIBUTE.sub(_mask_attribute, text)


def _mask_attribute(match: re.Match[str]) -> str:
    if not is_sensitive(match.group("name").rpartition(":")[2]):
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{_masked_like(match.group('value'))}"


def redact_text(text: str) -> str:
    """For bodies that could not be decoded: mask ``name: value`` pairs whose name looks secret."""
    # Bearer first: the pair pattern would take the word "Bearer" for the value and leave the token.
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if not _ANY_SECRET_WORD.search(text):  # the common case for junk: skip the costlier pair pattern
        return text
    return _TEXT_SECRET.sub(lambda m: f"{m.group('name')}{m.group('sep')}{_masked_like(m.group('value'))}", text)


def contains_mask(value: Any) -> bool:
    """Whether a recorded value lost something to redaction (it cannot be replayed as it was)."""
    if isinstance(value, dict):
        return any(contains_mask(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_mask(v) for v in value)
    return isinstance(value, str) and MASK in value


def _masked_like(value: str) -> str:
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{quote}{MASK}{quote}"
