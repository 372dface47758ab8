"""Work that may wait until the consumer thread has written what its pass sends (the replies).

A session whose loop collects its frames and writes them once per pass (the AMQP worker) runs the pass inside
``collecting()``; what the pipeline hands to ``defer`` meanwhile, on that thread, runs at the end of the pass,
after the write: the reply is on its way while, e.g., the journal builds the record of a read-only command
(not waited for anyway). Anywhere else (a pool thread, Redis, tests calling the pipeline) ``defer`` says no
and the caller does the work at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("kvmworker.dispatch")

_local = threading.local()


def deferring() -> bool:
    """This thread is in a pass that runs deferred work at its end."""
    return getattr(_local, "pending", None) is not None


def defer(work: Callable[[], None]) -> bool:
    """``work`` runs at the end of this thread's pass (True), or the caller must run it now (False)."""
    pending: list[Callable[[], None]] | None = getattr(_local, "pending", None)
    if pending is None:
        return False
    pending.append(work)
    return True


def begin_pass() -> None:
    """From now on this thread collects what is deferred; ``end_pass`` runs it (call it in a ``finally``)."""
    _local.pending = []


def end_pass() -> None:
    """Run what was deferred since ``begin_pass``, in order; one that fails is logged and the rest still run."""
    pending = _local.pending
    _local.pending = None
    for work in pending or ():  # work deferred by this work runs now too: ``defer`` says no from here
        try:
            work()
        except Exception:
            log.exception("deferred work failed")


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """One pass as a ``with`` block: what is deferred in it runs when it ends, however it ends."""
    begin_pass()
    try:
        yield
    finally:
        end_pass()
