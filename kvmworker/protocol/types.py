"""Constrained value types shared by the command models, each with the JSON Schema that says exactly what it accepts.

A validator that must answer with a specific code (30005 for a long name, 30001 for a network type)
raises ``coded(code, detail)``; the pipeline reads the code back from the pydantic error type.
Everything else that fails validation is answered with the command's default invalid-data code.

Every type here carries its own JSON Schema (``WithJsonSchema``), written from the same regular
expressions and bounds the validator checks (``kvmworker.protocol.patterns``), so that ``schemas/`` and
``/openapi.json`` accept a value exactly when the worker does: a test feeds both the same bodies.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictFloat, WithJsonSchema
from pydantic_core import PydanticCustomError

from kvmworker.protocol import patterns
from kvmworker.protocol.codes import Code

CODED_ERROR_PREFIX = "kvm_"
IFNAMSIZ = 16
MAX_DIGITS = 10
"""A number sent as a string has at most this many characters (leading zeros included)."""

_NAME_BODY = r"[A-Za-z0-9_][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+"
"""[A-Za-z0-9_.-], not starting with '-', not '.' or '..' (lengths are checked apart: JSON Schema counts them)."""
_MAC_BODY = r"[0-9A-Fa-f][02468AaCcEe](?::[0-9A-Fa-f]{2}){5}"
"""Six hex pairs; the first octet's low bit clear (a multicast address cannot be assigned to a device)."""
_DIGITS = patterns.fullmatch(f"[0-9]{{1,{MAX_DIGITS}}}")
_NAME = patterns.fullmatch(_NAME_BODY)
_MAC = patterns.fullmatch(_MAC_BODY)
_CIDR = patterns.fullmatch(patterns.CIDR)
_UUID = patterns.fullmatch(patterns.UUID)


def coded(code: Code, detail: str) -> PydanticCustomError:
    """A validation error that carries its reply code through pydantic."""
    return PydanticCustomError(f"{CODED_ERROR_PREFIX}{int(code)}", detail)


def code_of_error_type(error_type: str) -> Code | None:
    if not error_type.startswith(CODED_ERROR_PREFIX):
        return None
    return Code(int(error_type.removeprefix(CODED_ERROR_PREFIX)))


def string_schema(body: str | None = None, *, min_length: int = 0, max_length: int | None = None, **extra: Any):
    """The JSON Schema of a string: its length in characters and the pattern it matches as a whole."""
    schema: dict[str, Any] = {"type": "string"}
    if min_length:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    if body is not None:
        schema["pattern"] = patterns.schema_pattern(body)
    return schema | extra


def matching(body: str, detail: str, code: Code | None = Code.INVALID_PARAMETER) -> AfterValidator:
    """Refuse a string that is not wholly ``body``, the pattern published in the schema: with ``code``, or
    with the command's own invalid-data code when ``code`` is None."""
    regex = patterns.fullmatch(body)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise coded(code, detail) if code else PydanticCustomError("string_pattern_mismatch", detail)
        return value

    return AfterValidator(check)


# -- numbers -------------------------------------------------------------------------------------


def _int_or_digits(value: object) -> object:
    """The legacy document sends numbers as strings (``"vlan_id": "1001"``): a JSON integer, or up to ten decimal
    digits. JSON has one number type, so ``5.0`` is the integer 5 (as in JSON Schema); not a bool, and not "+5",
    " 5", "5.0" or "٥": those were never numbers in the contract."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise coded(Code.INVALID_PARAMETER, "expected an integer")
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise PydanticCustomError("int_parsing", "expected an integer or a string of up to 10 decimal digits")
        return int(value)
    return value


def loose_int(lo: int, hi: int) -> Any:
    """An integer lo..hi, sent as a JSON integer or as a string of decimal digits (``"1001"``)."""
    digits = string_schema(f"0*(?:{patterns.decimal_range(lo, hi)})", min_length=1, max_length=MAX_DIGITS)
    schema = {"anyOf": [{"type": "integer", "minimum": lo, "maximum": hi}, digits]}
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(_int_or_digits), WithJsonSchema(schema)]


def number(*, gt: float | None = None, le: float | None = None) -> Any:
    """A JSON number (integer or not); never a bool and never a string."""
    return Annotated[StrictFloat, Field(gt=gt, le=le)]


Flag = StrictBool
"""``true`` or ``false``: "yes", "off", 0 and 1 are not booleans in the contract."""

VlanId = loose_int(1, 4094)
Vni = loose_int(1, 16777215)
Mtu = loose_int(68, 65535)


# -- names ---------------------------------------------------------------------------------------


def _check_ifname(name: str) -> str:
    if not name:
        raise coded(Code.INVALID_PARAMETER, "a device name must not be empty")
    if len(name.encode()) > IFNAMSIZ - 1:
        raise coded(Code.DEVICE_NAME_TOO_LONG, f"device name is {len(name.encode())} bytes; the kernel allows 15")
    if not _NAME.fullmatch(name):
        raise coded(Code.INVALID_PARAMETER, "a device name may hold only A-Z a-z 0-9 _ . - and not start with -")
    return name


def _check_nsname(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise coded(Code.INVALID_PARAMETER, "a namespace name may hold only A-Z a-z 0-9 _ . - and not start with -")
    return name


def _check_mac(mac: str) -> str:
    if not _MAC.fullmatch(mac):
        if re.fullmatch(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}", mac):
            raise coded(Code.INVALID_PARAMETER, "a multicast MAC address cannot be assigned to a device")
        raise coded(Code.INVALID_PARAMETER, "a MAC address is six hex pairs separated by ':'")
    return mac.lower()


def _check_cidr(value: str) -> str:
    if not _CIDR.fullmatch(value):
        raise coded(Code.INVALID_PARAMETER, "an address is written as CIDR with its prefix length, e.g. 10.0.0.1/24")
    return str(ipaddress.ip_interface(value))


IfName = Annotated[
    str,
    AfterValidator(_check_ifname),
    WithJsonSchema(string_schema(_NAME_BODY, min_length=1, max_length=IFNAMSIZ - 1)),
]
"""A kernel network-device name: 1-15 bytes of [A-Za-z0-9_.-], not starting with '-', not '.' or '..'.
Any name longer than 15 bytes is 30005, however long (so no pydantic ``max_length``, which would answer 30006)."""

MacAddress = Annotated[
    str, Field(max_length=17), AfterValidator(_check_mac), WithJsonSchema(string_schema(_MAC_BODY, max_length=17))
]
"""A unicast MAC address in either case; the worker uses its lower-case form."""

Cidr = Annotated[
    str,
    Field(max_length=64),
    AfterValidator(_check_cidr),
    WithJsonSchema(string_schema(patterns.CIDR, max_length=64, description="e.g. 10.0.0.1/24 or fd00::1/64")),
]
"""An IPv4 or IPv6 address with its prefix length (no netmask form, no zone id)."""

NamespaceName = Annotated[
    str,
    Field(min_length=1, max_length=64),
    AfterValidator(_check_nsname),
    WithJsonSchema(string_schema(_NAME_BODY, min_length=1, max_length=64)),
]
"""Namespace names become files in /run/netns: a safe character set keeps them out of path games."""


def _uuid_text(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value  # only the canonical text gets here; pydantic's own (compiled) UUID validation makes the UUID
    raise PydanticCustomError("uuid_parsing", "must be a UUID, e.g. 5b0503ba-1af4-11ea-baa2-000c2902e179")


UUID_SCHEMA = string_schema(patterns.UUID, format="uuid")
Uuid = Annotated[uuid.UUID, BeforeValidator(_uuid_text), WithJsonSchema(UUID_SCHEMA)]
"""A UUID in its RFC 4122 text form (8-4-4-4-12 hex digits, either case), as JSON Schema's ``format: uuid``."""


def one_of_words(*words: str) -> tuple[Callable[[object], object], dict[str, Any]]:
    """A word from ``words`` in any case: the lower-casing validator and the schema that says so."""

    def lower(value: object) -> object:
        return value.lower() if isinstance(value, str) and value.isascii() and value.lower() in words else value

    body = "|".join(patterns.case_insensitive(word) for word in words)
    return lower, string_schema(body, description=f"{', '.join(words)}, in any case")


# -- rules across fields, for the models' JSON Schemas --------------------------------------------


def given(*names: str) -> dict[str, Any]:
    """Each of ``names`` is present and not null."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def absent(*names: str) -> dict[str, Any]:
    """None of ``names`` is present, or each is null."""
    return {"properties": {name: {"type": "null"} for name in names}}


def schema_rules(*rules: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra`` that adds the rules its ``model_validator`` enforces, under ``allOf``."""

    def extra(schema: dict[str, Any]) -> None:
        schema.setdefault("allOf", []).extend(rules)

    return extra
