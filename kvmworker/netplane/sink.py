"""Where the network watch's events go: the worker's ``Emitter`` (``kvmworker.events``), which numbers and
buffers them. The watch needs only ``emit`` and ``request_sync`` of it."""

from __future__ import annotations

from typing import Any, Protocol

SYNC_AFTER_OVERRUN = "netlink notifications were lost"


class EventSink(Protocol):
    def emit(
        self,
        source: str,
        kind: str,
        subject: str,
        state: str,
        *,
        previous: str | None = None,
        reason: str | None = None,
        msg_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> object: ...

    def request_sync(self, reason: str) -> None: ...
