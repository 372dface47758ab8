"""Envelope → reply. Knows nothing of kombu, HTTP or JSON transports; it sees a ``Request``.

Two phases, so that the transport can schedule by resource before a thread is spent:
``admit`` (decode, validate, route; cheap, on the consumer thread) and ``execute`` (on the pool).
Any exception in either phase becomes a reply in ``reply_for_exception``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kvmworker.dispatch.commands import BoundCommand, HandlerRegistry
from kvmworker.dispatch.replies import reply_for_exception
from kvmworker.dispatch.request import Context, Request
from kvmworker.protocol.codec import DEFAULT_MAX_BODY, decode_body
from kvmworker.protocol.envelope import Reply, parse_envelope

log = logging.getLogger("kvmworker.dispatch")
# Every reply is logged once when it is sent (CommandLogMiddleware, at WARNING when it is an error, with
# its detail): a refusal logged here as well would be said twice.
EXPECTED_LEVEL = logging.DEBUG


class MiddlewareChain:
    """The old hook runner, kept until the pipeline replaces this dispatcher."""

    def __init__(self, middleware: Iterable[Any] = ()):
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
                fn = getattr(mw, hook, None)
                if fn is not None:
                    fn(*args)
            except Exception:
                log.exception("middleware %s.%s failed", type(mw).__name__, hook)


@dataclass(frozen=True)
class Admitted:
    request: Request
    command: BoundCommand
    data: BaseModel
    resource: str | None


class Dispatcher:
    def __init__(
        self,
        registry: HandlerRegistry,
        middleware: MiddlewareChain | None = None,
        *,
        host: str = "",
        max_body: int = DEFAULT_MAX_BODY,
    ):
        self.registry = registry
        self.middleware = middleware or MiddlewareChain()
        self.host = host
        self.max_body = max_body

    def admit(self, request: Request) -> Admitted | Reply:
        """Decode and validate; a Reply here means the command will not run."""
        try:
            answer = self.middleware.first_answer("on_receive", request)
            if answer is not None:
                request.assign_msg_id()
                return answer
            envelope = parse_envelope(decode_body(request.body, request.content_type, self.max_body))
            request.envelope = envelope
            request.assign_msg_id()
            bound = self.registry.lookup(envelope.handler, envelope.command)
        except Exception as exc:
            request.assign_msg_id()
            return reply_for_exception(exc, context=_label(request), expected_level=EXPECTED_LEVEL)
        try:
            data = bound.spec.model.model_validate(envelope.data)
        except Exception as exc:
            return reply_for_exception(
                exc, invalid_code=bound.invalid_code, context=_label(request), expected_level=EXPECTED_LEVEL
            )
        resource = bound.spec.resource(data) if bound.spec.resource else None
        request.inline = bound.spec.inline
        request.read_only = not bound.spec.mutates
        request.safe_to_rerun = bound.spec.safe_to_rerun
        return Admitted(request, bound, data, resource)

    def execute(self, admitted: Admitted) -> Reply:
        request = admitted.request
        try:
            answer = self.middleware.first_answer("before_execute", request)
            if answer is not None:
                return answer
            result = admitted.command.call(admitted.data, self.context(request))
        except Exception as exc:
            return reply_for_exception(
                exc, invalid_code=admitted.command.invalid_code, context=_label(request), expected_level=EXPECTED_LEVEL
            )
        return result if isinstance(result, Reply) else Reply.ok(_plain(result))

    def handle(self, request: Request) -> Reply:
        """Both phases in the calling thread, with the after-reply hooks (tests, embedded callers)."""
        started = time.perf_counter()
        outcome = self.admit(request)
        reply = self.execute(outcome) if isinstance(outcome, Admitted) else outcome
        self.middleware.notify("after_reply", request, reply, time.perf_counter() - started)
        return reply

    def context(self, request: Request) -> Context:
        envelope = request.envelope
        deadline = request.received_at + envelope.timeout if envelope and envelope.timeout else None
        return Context(
            msg_id=request.msg_id,
            dry_run=bool(envelope and envelope.dry_run),
            host=self.host,
            deadline=deadline,
            request=request,
        )


def _label(request: Request) -> str:
    env = request.envelope
    name = f"{env.handler}.{env.command}" if env else "?"
    return f"[{request.msg_id or '-'} {name}] "


def _plain(result: object) -> object:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result
