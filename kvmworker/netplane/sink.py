"""Where the network watch's events go: the worker's ``Emitter`` (``kvmworker.events``), which numbers and
buffers them. The watch needs only ``emit`` and ``request_sync`` of it."""

from __future__ import annotations

from kvmworker.events.emitter import Emitter as EventSink

SYNC_AFTER_OVERRUN = "netlink notifications were lost"

__all__ = ["SYNC_AFTER_OVERRUN", "EventSink"]
