"""The worker's own ``worker.state`` events: ``online`` at start, ``offline`` at stop, ``degraded`` while a
component (libvirt) is lost, and ``sync`` every ``resync_interval`` seconds or when a source asks for one.

``online`` and ``sync`` carry the whole picture (``Pictures``), so a consumer that missed events, or starts
late, knows the truth: events are hints, the picture is the truth. ``sync`` also says how many events the
buffer dropped since the last one (``data.dropped``). Pictures are gathered on this module's own thread,
never on the thread that asked (a libvirt callback, a handler).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kvmworker.events.emitter import Emitter
from kvmworker.events.model import WORKER_STATE
from kvmworker.events.pictures import Pictures

log = logging.getLogger("kvmworker.events")

DEFAULT_RESYNC_INTERVAL_S = 300.0
ONLINE, OFFLINE, DEGRADED, SYNC = "online", "offline", "degraded", "sync"


class WorkerState:
    """Implements ``StateHooks`` for the emitter; ``start()`` says online and starts the periodic sync."""

    def __init__(
        self,
        emitter: Emitter,
        pictures: Pictures,
        interval: float = DEFAULT_RESYNC_INTERVAL_S,
        on_sync: Callable[[str], None] | None = None,
    ):
        self._emitter = emitter
        self._pictures = pictures
        self._interval = interval
        self._on_sync = on_sync or (lambda reason: None)
        self._lock = threading.Lock()
        self._degraded: dict[str, str] = {}
        self._state = OFFLINE
        self._requested: list[str] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmworker-events-sync", daemon=True)
        emitter.bind_state(self)

    @property
    def host(self) -> str:
        return self._emitter.host

    def start(self) -> None:
        with self._lock:
            degraded = dict(self._degraded)
            self._state = DEGRADED if degraded else ONLINE
        self._emit(ONLINE, data=self._picture())
        if degraded:
            self._emit(DEGRADED, reason=_reasons(degraded), data={"degraded": degraded})
        self._thread.start()

    def stop(self, reason: str = "stopping") -> None:
        """The periodic sync ends and ``offline`` is emitted (the caller flushes the sender)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            previous, self._state = self._state, OFFLINE
        self._emit(OFFLINE, previous=previous, reason=reason)

    # -- StateHooks -------------------------------------------------------------------------------------------

    def request_sync(self, reason: str) -> None:
        with self._lock:
            self._requested.append(reason)
        self._wake.set()

    def degraded(self, component: str, reason: str) -> None:
        with self._lock:
            if self._degraded.get(component) == reason:
                return
            self._degraded[component] = reason
            degraded = dict(self._degraded)
            previous, self._state = self._state, DEGRADED
        if previous == OFFLINE and not self._thread.is_alive():
            return  # not started yet: ``start`` says it
        self._emit(DEGRADED, previous=previous, reason=f"{component}: {reason}", data={"degraded": degraded})

    def recovered(self, component: str) -> None:
        with self._lock:
            if self._degraded.pop(component, None) is None:
                return
            degraded = dict(self._degraded)
            previous, self._state = self._state, DEGRADED if degraded else ONLINE
            state = self._state
        if previous == OFFLINE and not self._thread.is_alive():
            return
        reason = f"{component}: regained"
        if state == ONLINE:
            self._emit(ONLINE, previous=previous, reason=reason, data=self._picture())
        else:
            self._emit(DEGRADED, previous=previous, reason=reason, data={"degraded": degraded})

    # -- sync -------------------------------------------------------------------------------------------------

    def sync(self, reason: str = "interval") -> None:
        data = self._picture(dropped=self._emitter.buffer.take_dropped(), interval=self._interval)
        self._emit(SYNC, reason=reason, data=data)
        self._on_sync(reason)

    def _run(self) -> None:
        while not self._stopping.is_set():
            requested = self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                reasons, self._requested = self._requested, []
            if requested and not reasons:
                continue
            try:
                self.sync(", ".join(dict.fromkeys(reasons)) if reasons else "interval")
            except Exception:
                log.exception("sync failed")

    def _picture(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            degraded = dict(self._degraded)
        return {**self._pictures.snapshot(), "degraded": degraded, **extra}

    def _emit(self, state: str, **fields: Any) -> None:
        source, kind = WORKER_STATE
        self._emitter.emit(source, kind, self.host, state, **fields)


def _reasons(degraded: dict[str, str]) -> str:
    return "; ".join(f"{component}: {reason}" for component, reason in sorted(degraded.items()))
