"""What a command may know about the message that asked for it (never the raw message), and what it may say
back while it runs: its progress, and whether it has been asked to stop (INTERFACE §8)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from kvmworker.dispatch.operations import Operation
from kvmworker.protocol.errors import Cancelled


@dataclass(frozen=True)
class Context:
    msg_id: str
    dry_run: bool = False
    host: str = ""
    deadline: float | None = None
    """Seconds since the epoch by which the caller stops waiting (its envelope's ``timeout``), if it said."""
    operation: Operation | None = None
    """The command's entry in the worker's operations (None: it runs inline, or outside a pipeline)."""

    def progress(self, percent: float | None, phase: str | None = None) -> None:
        """How far it is (0–100; None: unknown) and in which phase: seen in ``operations`` and ``result``, and
        published as an ``operation.progress`` event. Cheap and never blocks: call it as often as it changes."""
        if self.operation is not None:
            self.operation.report(percent, phase)

    @property
    def cancelled(self) -> bool:
        """``SystemHandler.cancel`` asked this command to stop (only ever true for a ``cancellable`` one)."""
        return self.operation is not None and self.operation.cancelled

    def raise_if_cancelled(self, detail: str = "cancelled before it changed anything") -> None:
        """Raise ``Cancelled`` (30013) if asked to stop: call it where stopping leaves the host as it was."""
        if self.cancelled:
            raise Cancelled(detail)

    def on_cancel(self, wake: Callable[[], None]) -> AbstractContextManager[None]:
        """While inside, a cancel calls ``wake`` (from another thread) to end a wait early; at once if already
        asked. Then look at ``cancelled``."""
        if self.operation is None:
            return nullcontext()
        return self.operation.on_cancel(wake)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when cancelled meanwhile: True when cut short by a cancel."""
        woken = threading.Event()
        with self.on_cancel(woken.set):
            return woken.wait(seconds)
