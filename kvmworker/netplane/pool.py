"""One ``Netlink`` per namespace, opened on first use and kept for the worker's life."""

from __future__ import annotations

import threading
from collections.abc import Callable

from kvmworker.netplane.netlink import Netlink, open_netlink

Opener = Callable[[str | None], Netlink]


class NetlinkPool:
    """``get(None)`` is the worker's own namespace (``default``: its ``--netns``, or the process's)."""

    def __init__(self, default: str | None = None, opener: Opener = open_netlink):
        self.default = default
        self._opener = opener
        self._lock = threading.Lock()
        self._open: dict[str | None, Netlink] = {}

    def get(self, namespace: str | None = None) -> Netlink:
        key = namespace or self.default
        with self._lock:
            nl = self._open.get(key)
            if nl is not None and nl.still_current():
                return nl
            if nl is not None:  # deleted (and perhaps made again) behind our back
                del self._open[key]
                nl.close()
            nl = self._open[key] = self._opener(key)
            return nl

    def forget(self, namespace: str) -> None:
        """Close the sockets of a namespace about to be deleted: they would keep it alive."""
        with self._lock:
            nl = self._open.pop(namespace, None)
        if nl is not None:
            nl.close()

    def close(self) -> None:
        with self._lock:
            open_now, self._open = list(self._open.values()), {}
        for nl in open_now:
            nl.close()
