"""A full copy of an image with ``qemu-img convert``: progress as it goes, stoppable, and all-or-nothing.

The copy is written under a hidden name beside its destination (callers' names never start with '.') and renamed
into place only when complete; a cancel or a failure kills qemu-img and removes the partial file, so the pool is as
before. Progress and cancellation come in through two callables, which a command takes from its context
(INTERFACE §8): ``progress(percent, phase)`` and ``cancelled() -> bool``.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from kvmworker.protocol.errors import Cancelled, InvalidParameter, KvmError

POLL_SECONDS = 0.1
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _no_progress(percent: float | None, phase: str | None) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class CopyControl:
    """How a copy reports (``progress``) and learns it must stop (``cancelled``)."""

    progress: Callable[[float | None, str | None], None] = _no_progress
    cancelled: Callable[[], bool] = _never

    @classmethod
    def of(cls, ctx: object) -> CopyControl:
        """From a command's context, when it has them (the pipeline's ``Context.progress`` / ``cancelled``)."""
        progress = getattr(ctx, "progress", None)
        return cls(
            progress if callable(progress) else _no_progress,
            lambda: bool(getattr(ctx, "cancelled", False)),
        )


def partial_path(dest: str) -> str:
    path = Path(dest)
    return str(path.with_name(f".{path.name}.kvt-partial"))


def full_copy(source: str, source_format: str, dest: str, control: CopyControl, grow_to: int | None = None) -> None:
    """Copy ``source`` (its format named) to ``dest`` in the same format, optionally grown; dest appears whole or
    not at all."""
    if os.path.lexists(dest):
        raise InvalidParameter(f"{dest} exists (appeared meanwhile); nothing was copied", field="name")
    partial = partial_path(dest)
    done = False
    try:
        _convert(source, source_format, partial, control)
        if grow_to is not None:
            _run(["qemu-img", "resize", "-f", source_format, partial, str(grow_to)])
        control.progress(100.0, "copied")
        os.rename(partial, dest)
        done = True
    finally:
        if not done:
            with suppress(FileNotFoundError):
                os.unlink(partial)


def _convert(source: str, fmt: str, partial: str, control: CopyControl) -> None:
    if control.cancelled():
        raise Cancelled("cancelled before the copy started; nothing was written")
    args = ["qemu-img", "convert", "-p", "-f", fmt, "-O", fmt, source, partial]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        _follow(proc, control)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    if proc.returncode != 0:
        raise KvmError(f"qemu-img convert failed ({proc.returncode}): {err[:500]}")


def _follow(proc: subprocess.Popen[bytes], control: CopyControl) -> None:
    """Reads qemu-img's progress lines until it ends; a cancel kills it and raises 30013."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    last = -1.0
    while True:
        if control.cancelled():
            proc.kill()
            raise Cancelled(f"cancelled at {max(last, 0):.0f}% of the copy; the partial copy was removed")
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        found = _PERCENT.findall(chunk)
        if found and float(found[-1]) != last:
            last = float(found[-1])
            control.progress(last, "copying")


def _run(args: list[str]) -> None:
    out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise KvmError(f"{args[0]} {args[1]} failed: {out.stderr.strip()[:500]}")
