"""Resource keys: commands whose data map to the same key run one after another (``command(resource=…)``)."""

from __future__ import annotations

WORKER_NAMESPACE = "@worker"


def netlink_key(namespace: str | None) -> str:
    """The key of a network namespace (None: the worker's own): its devices change one command at a time."""
    return f"netlink:{namespace or WORKER_NAMESPACE}"


def volume_key(pool: str | None, name: str) -> str:
    """The key of a volume: its name alone. The pool is left out on purpose: a caller who names the default pool
    and one who omits it must get the same key, and the api layer does not know the default; volumes of the same
    name in two pools merely wait for each other."""
    return f"volume:{name}"
