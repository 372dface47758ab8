"""The whole picture of a host, for ``worker.state online`` and ``sync``: every VM and its state, every network
and its health. Sources register a provider each; the worker's state emitter calls them all."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("kvmworker.events")

PictureProvider = Callable[[], Mapping[str, Any]]
"""Returns one part of the picture, e.g. VMs ``{name: state}`` or networks ``{network_id: health}``."""

VMS = "vms"
NETWORKS = "networks"


class Pictures:
    """Named providers (``vms``, ``networks``); ``snapshot()`` asks each. A provider that fails leaves its part
    out and names the error under ``errors``: a sync is never lost to one broken source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._providers: dict[str, PictureProvider] = {}

    def provide(self, name: str, provider: PictureProvider) -> None:
        with self._lock:
            self._providers[name] = provider

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            providers = dict(self._providers)
        picture: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, provider in providers.items():
            try:
                picture[name] = dict(provider())
            except Exception as exc:
                log.warning("the %s picture failed: %s", name, exc)
                errors[name] = f"{type(exc).__name__}: {exc}"
        if errors:
            picture["errors"] = errors
        return picture
