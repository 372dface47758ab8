"""Constrained value types shared by the command models.

A validator that must answer with a specific code (30005 for a long name, 30001 for a network type)
raises ``coded(code, detail)``; the dispatcher reads the code back from the pydantic error type.
Everything else that fails validation is answered with the command's default invalid-data code.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from kvmworker.protocol.codes import Code

CODED_ERROR_PREFIX = "kvm_"
IFNAMSIZ = 16
_IFNAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def coded(code: Code, detail: str) -> PydanticCustomError:
    """A validation error that carries its reply code through pydantic."""
    return PydanticCustomError(f"{CODED_ERROR_PREFIX}{int(code)}", detail)


def code_of_error_type(error_type: str) -> Code | None:
    if not error_type.startswith(CODED_ERROR_PREFIX):
        return None
    return Code(int(error_type.removeprefix(CODED_ERROR_PREFIX)))


def _check_ifname(name: str) -> str:
    if not name:
        raise coded(Code.INVALID_PARAMETER, "a device name must not be empty")
    if len(name.encode()) > IFNAMSIZ - 1:
        raise coded(Code.DEVICE_NAME_TOO_LONG, f"device name is {len(name.encode())} bytes; the kernel allows 15")
    if not _IFNAME_CHARS.fullmatch(name) or name.startswith("-") or name in (".", ".."):
        raise coded(Code.INVALID_PARAMETER, "a device name may hold only A-Z a-z 0-9 _ . - and not start with -")
    return name


def _check_nsname(name: str) -> str:
    if not _IFNAME_CHARS.fullmatch(name) or name.startswith("-") or name in (".", ".."):
        raise coded(Code.INVALID_PARAMETER, "a namespace name may hold only A-Z a-z 0-9 _ . - and not start with -")
    return name


def _check_mac(mac: str) -> str:
    mac = mac.lower()
    if not _MAC.fullmatch(mac):
        raise coded(Code.INVALID_PARAMETER, "a MAC address is six hex pairs separated by ':'")
    if int(mac[:2], 16) & 1:
        raise coded(Code.INVALID_PARAMETER, "a multicast MAC address cannot be assigned to a device")
    return mac


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError:
        raise coded(Code.INVALID_PARAMETER, "an address is written as CIDR, e.g. 10.0.0.1/24") from None
    # ip_interface accepts a bare address as /32 or /128; callers that need a prefix check '/' themselves.


def _int_from_str(value: object) -> object:
    """The legacy document sends numbers as strings (``"vlan_id": "1001"``): accept decimal digits only."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        return int(value.strip())
    return value


def _strict_int(value: object) -> object:
    if isinstance(value, bool) or (not isinstance(value, int) and not isinstance(value, str)):
        raise coded(Code.INVALID_PARAMETER, "expected an integer")
    return value


IfName = Annotated[str, Field(json_schema_extra={"maxLength": IFNAMSIZ - 1}), AfterValidator(_check_ifname)]
"""A kernel network-device name: 1-15 bytes of [A-Za-z0-9_.-], not starting with '-', not '.' or '..'.
Any name longer than 15 bytes is 30005, however long (so no pydantic ``max_length``, which would answer 30006)."""

LooseInt = Annotated[int, BeforeValidator(_int_from_str), BeforeValidator(_strict_int)]
VlanId = Annotated[LooseInt, Field(ge=1, le=4094)]
Vni = Annotated[LooseInt, Field(ge=1, le=16777215)]
Mtu = Annotated[LooseInt, Field(ge=68, le=65535)]
MacAddress = Annotated[str, Field(max_length=17), AfterValidator(_check_mac)]
Cidr = Annotated[str, Field(max_length=64), AfterValidator(_check_cidr)]
NamespaceName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_nsname)]
"""Namespace names become files in /run/netns: a safe character set keeps them out of path games."""
