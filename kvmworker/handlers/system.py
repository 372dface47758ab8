"""SystemHandler (extension): is the worker there, and what can it do."""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvmworker import __version__
from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context

FeatureProbe = Callable[[], Any]


class SystemHandler:
    name = "SystemHandler"

    def __init__(
        self,
        host: str,
        catalogue: Callable[[], Mapping[str, list[str]]],
        features: Mapping[str, FeatureProbe] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._host = host
        self._catalogue = catalogue
        self._features = dict(features or {})
        self._clock = clock
        self._started = clock()

    @command(mutates=False)
    def ping(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "hostname": socket.gethostname(),
            "version": __version__,
            "uptime": round(self._clock() - self._started, 3),
        }

    @command(mutates=False)
    def capabilities(self, data: Any, ctx: Context) -> dict[str, Any]:
        return {
            "host": self._host,
            "version": __version__,
            "kernel": platform.release(),
            "handlers": dict(self._catalogue()),
            "features": {name: _probe(fn) for name, fn in sorted(self._features.items())},
        }


def _probe(fn: FeatureProbe) -> Any:
    """A feature that cannot be determined is reported with the reason, not as an error of the command."""
    try:
        return fn()
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
