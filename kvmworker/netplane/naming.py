"""Names and ownership tags of what the worker creates on the host: pure strings, no netlink.

Every device the worker creates carries an ifalias starting with ``OWNER_TAG``; the worker changes
or deletes only devices that carry it. A network's bridge is ``brq`` + the first 11 characters of its id: the
VM side (``virt``) and the inventory read the same names here.
"""

from __future__ import annotations

BRIDGE_PREFIX = "brq"
OWNER_TAG = "kvmworker:"


def bridge_name(network_id: str) -> str:
    """``brq`` + the first 11 characters of the network id, as in the documented example."""
    return BRIDGE_PREFIX + str(network_id)[:11]


def network_alias(network_id: str) -> str:
    return f"{OWNER_TAG}network:{network_id}"


def device_alias() -> str:
    return f"{OWNER_TAG}device"


def is_owned(alias: str | None) -> bool:
    return bool(alias) and alias.startswith(OWNER_TAG)
