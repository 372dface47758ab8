"""Hooks around every message (journal, signatures, metrics) that can never fail the message.

A hook may answer instead of the command (a stored reply for a duplicate, 20004 for a bad
signature) by returning a Reply. A hook that raises is logged loudly and skipped, except in
``before_execute`` of a middleware marked ``guard = True``: a guard that cannot decide refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kvmworker.dispatch.request import Request
from kvmworker.protocol.envelope import Reply

log = logging.getLogger("kvmworker.middleware")


class Middleware:
    guard = False

    def on_receive(self, request: Request) -> Reply | None:
        """Before the body is decoded; the message's bytes and headers only."""
        return None

    def before_execute(self, request: Request) -> Reply | None:
        """After the envelope is valid, on the pool thread, before the handler runs."""
        return None

    def after_reply(self, request: Request, reply: Reply, duration: float) -> None:
        """Once the reply is final, before it is published."""

    def after_publish(self, request: Request, reply: Reply) -> None:
        """Once the reply is out (or there was nobody to send it to)."""


class MiddlewareChain:
    def __init__(self, middleware: Iterable[Middleware] = ()):
        self.middleware = list(middleware)

    def first_answer(self, hook: str, request: Request) -> Reply | None:
        for mw in self.middleware:
            try:
                reply = getattr(mw, hook)(request)
            except Exception:
                log.exception("middleware %s.%s failed", type(mw).__name__, hook)
                if mw.guard:
                    raise
                continue
            if reply is not None:
                return reply
        return None

    def notify(self, hook: str, *args: object) -> None:
        for mw in self.middleware:
            try:
                getattr(mw, hook)(*args)
            except Exception:
                log.exception("middleware %s.%s failed", type(mw).__name__, hook)
