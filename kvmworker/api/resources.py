"""Resource keys: commands whose data map to the same key run one after another (``command(resource=…)``)."""

from __future__ import annotations

WORKER_NAMESPACE = "@worker"


def netlink_key(namespace: str | None) -> str:
    """The key of a network namespace (None: the worker's own): its devices change one command at a time."""
    return f"netlink:{namespace or WORKER_NAMESPACE}"


DEFAULT_POOL = "@default"


def volume_key(pool: str | None, name: str) -> str:
    """The key of one volume (None: the worker's ``--storage-pool``): its commands run one after another."""
    return f"volume:{pool or DEFAULT_POOL}/{name}"
