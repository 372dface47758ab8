"""The life of one message, from its delivery to its settling, in one place.

    receive(delivery, port)                                  on the consumer thread
      admit    on_receive hooks → decode → envelope → route → validate → resource key
      run      inline right here, or on the pool behind its resource: before_execute hooks → the command
             (on the pool it is an operation meanwhile, §8: queued, running, answered; a cancel may drop it
             before it starts, and the command reports progress and notices a cancel through its Context)
      answer   the reply serialises (else 99999) → after_reply hooks → signed → port.publish
      settle   from publish's ``done``: ack once the reply is out; requeue when it could not be

Any exception on the way becomes a reply (``reply_for_exception``). Expected errors are logged here at DEBUG:
the command's own line (``kvmworker.commands``) is the one warning about them. ``handle`` takes the same
steps in the calling thread and returns the reply (tests, embedded callers). Imports neither kombu nor HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from pydantic import BaseModel

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.context import Context
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.executor import CallerRuns, Executor
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware, Vouched, keeps_state
from kvmworker.dispatch.operations import Operation, Operations
from kvmworker.dispatch.port import CapturingPort, Outgoing, Port
from kvmworker.dispatch.replies import reply_for_exception
from kvmworker.protocol.codec import DEFAULT_MAX_BODY, decode_body, encode_reply
from kvmworker.protocol.envelope import Reply, parse_envelope
from kvmworker.protocol.errors import Cancelled
from kvmworker.protocol.wire import HEADER_MSG_ID

log = logging.getLogger("kvmworker.dispatch")
EXPECTED_LEVEL = logging.DEBUG


class ReplySigner(Protocol):
    def sign_reply(self, body: bytes, correlation_id: str, msg_id: str) -> dict[str, Any]: ...


class Pipeline:
    def __init__(
        self,
        registry: HandlerRegistry,
        middleware: Iterable[Middleware[Any]] = (),
        *,
        host: str = "",
        max_body: int = DEFAULT_MAX_BODY,
        signer: ReplySigner | None = None,
        executor: Executor | None = None,
        operations: Operations | None = None,
    ):
        self.registry = registry
        self.middleware = tuple(middleware)  # each hook is called on each of them, in this order
        self._stateful = tuple(mw for mw in self.middleware if keeps_state(mw))
        # per hook, those that implement it (the base's hooks do nothing): no call per message for the others
        self._receiving = _implementing(self.middleware, "on_receive")
        self._executing = _implementing(self.middleware, "before_execute")
        self._replying = _implementing(self.middleware, "after_reply")
        self.host = host
        self.max_body = max_body
        self._signer = signer
        self._executor = executor or CallerRuns()
        self.operations = operations or Operations()
        """The commands queued and running now, and the last answered (``SystemHandler`` reads them)."""
        self._stopping = threading.Event()

    # -- entries ---------------------------------------------------------------

    def receive(self, delivery: Delivery, port: Port) -> None:
        """On the consumer thread: admit now, run inline or on the pool; the port hears the rest."""
        if self._stopping.is_set():
            port.settle(False)  # it has not started: back to the queue for whoever consumes next
            return
        msg = self._new(delivery)
        refused = self._admit(msg)
        if refused is not None:
            self._answer(msg, refused, port)
        elif msg.inline:
            self._run(msg, port)
        else:
            # known as queued before the pool has it: a pool thread may start it at once
            msg.operation = self._operation(msg, drop=partial(self._drop, msg, port))
            self._executor.submit(msg.resource, partial(self._run, msg, port))

    def handle(self, delivery: Delivery, port: Port | None = None) -> Reply:
        """Every step in the calling thread; returns the reply as published (or as it would have been)."""
        msg = self._new(delivery)
        refused = self._admit(msg)
        if refused is None and not msg.inline:
            msg.operation = self._operation(msg, drop=None)  # it starts right away: nothing to drop
            self.operations.start(msg.operation)
        reply = refused if refused is not None else self._execute(msg)
        return self._answer(msg, reply, port or CapturingPort())

    def admit(self, delivery: Delivery) -> InFlight | Reply:
        """The first step alone: the message as it would run, or the reply refusing it. Runs and answers nothing."""
        msg = self._new(delivery)
        refused = self._admit(msg)
        return msg if refused is None else refused

    def stop(self) -> None:
        """From now on, messages that have not started go back to the queue (SIGTERM); running ones finish."""
        self._stopping.set()

    def shutdown(self) -> None:
        """Once every received message is settled: the pool's threads end."""
        self._stopping.set()
        self._executor.shutdown(wait=True)

    # -- the steps -------------------------------------------------------------

    def _new(self, delivery: Delivery) -> InFlight:
        return InFlight(delivery, {mw: mw.new_state() for mw in self._stateful})

    def _admit(self, msg: InFlight) -> Reply | None:
        """Decode, validate, route; a Reply here means the command will not run."""
        delivery = msg.delivery
        try:
            refused = self._on_receive(msg)
            if refused is not None:
                return refused
            payload = decode_body(delivery.body, delivery.content_type, self.max_body)
            msg.envelope = envelope = parse_envelope(payload)
            if envelope.msg_id is not None:
                msg.msg_id = _msg_id_text(payload["msg_id"], envelope.msg_id)
            bound = self.registry.lookup(envelope.handler, envelope.command)
        except Exception as exc:
            return reply_for_exception(exc, context=msg.label, expected_level=EXPECTED_LEVEL)
        try:
            # = model_validate, without its wrapper (the class's validator: built by now, even with defer_build)
            data = bound.spec.model.__pydantic_validator__.validate_python(envelope.data)
            resource = bound.spec.resource(data) if bound.spec.resource else None
        except Exception as exc:
            return reply_for_exception(
                exc, invalid_code=bound.invalid_code, context=msg.label, expected_level=EXPECTED_LEVEL
            )
        msg.command, msg.data, msg.resource = bound, data, resource
        return None

    def _operation(self, msg: InFlight, drop: Callable[[str], None] | None) -> Operation:
        command, envelope = msg.command, msg.envelope
        assert command is not None and envelope is not None  # admitted
        return self.operations.add(
            msg.msg_id, command.handler, command.name, msg.resource, command.spec.cancellable, drop
        )

    def _run(self, msg: InFlight, port: Port) -> None:
        op = msg.operation
        if op is not None and not self.operations.start(op):
            return  # cancelled while it waited: the canceller has answered it (``_drop``)
        if self._stopping.is_set():
            if op is not None:
                self.operations.withdrawn(op)
            port.settle(False)  # it waited behind its resource and has not started: back to the queue
            return
        self._answer(msg, self._execute(msg), port)

    def _drop(self, msg: InFlight, port: Port, why: str) -> None:
        """A queued command cancelled before it started: answered 30013 and settled now, on the canceller's
        thread; it never runs (its task finds it answered)."""
        self._answer(msg, Reply.from_error(Cancelled(why)), port)

    def _execute(self, msg: InFlight) -> Reply:
        command = msg.command
        assert command is not None  # admitted
        try:
            answer = self._before_execute(msg)
            if answer is not None:
                return answer
            result = command.call(msg.data, self._context(msg))
        except Exception as exc:
            return reply_for_exception(
                exc, invalid_code=command.invalid_code, context=msg.label, expected_level=EXPECTED_LEVEL
            )
        return result if isinstance(result, Reply) else Reply.ok(_plain(result))

    def _answer(self, msg: InFlight, reply: Reply, port: Port) -> Reply:
        """Final reply → hooks → publish; the message is settled when the publish is done."""
        reply, body = _serialised(msg, reply)
        msg.reply_body = body
        self._after_reply(msg, reply, time.perf_counter() - msg.started)
        if msg.operation is not None:  # after the journal recorded the reply: ``result`` finds it there now
            self.operations.answered(msg.operation, reply.code)
        if not msg.reply_to:
            # INFO: the command's own line already says how it ended; the reply is in the journal
            log.info("[%s] no reply_to: reply %d not sent", msg.msg_id, reply.code)
            port.settle(True)
            return reply
        try:
            outgoing = self._outgoing(msg, msg.reply_to, body)
        except Exception:
            log.exception("[%s] reply could not be signed; message goes back to the queue", msg.msg_id)
            port.settle(False)
            return reply
        port.publish(outgoing, partial(_published, msg, port))
        return reply

    def _outgoing(self, msg: InFlight, reply_to: str, body: bytes) -> Outgoing:
        correlation_id = msg.delivery.correlation_id or msg.msg_id
        headers = {HEADER_MSG_ID: msg.msg_id}
        if self._signer is not None:
            headers.update(self._signer.sign_reply(body, correlation_id, msg.msg_id))
        return Outgoing(body, reply_to, correlation_id, msg.msg_id, headers)

    def _context(self, msg: InFlight) -> Context:
        envelope = msg.envelope
        assert envelope is not None  # admitted
        deadline = msg.delivery.received_at + envelope.timeout if envelope.timeout else None
        return Context(
            msg_id=msg.msg_id, dry_run=envelope.dry_run, host=self.host, deadline=deadline, operation=msg.operation
        )

    # -- the hooks -------------------------------------------------------------

    def _on_receive(self, msg: InFlight) -> Reply | None:
        for mw, hook in self._receiving:
            try:  # not a helper per call: a hook costs little, a call around each as much again
                decision = hook(msg)
            except Exception:
                if _failed(mw, hook):
                    raise
                continue
            if isinstance(decision, Vouched):
                msg.verified_until = decision.until
            elif decision is not None:
                if not decision.answer_sender:
                    msg.reply_to = None
                return decision.reply
        return None

    def _before_execute(self, msg: InFlight) -> Reply | None:
        for mw, hook in self._executing:
            try:
                answer = hook(msg)
            except Exception:
                if _failed(mw, hook):
                    raise
                continue
            if answer is not None:
                return answer
        return None

    def _after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        for mw, hook in self._replying:
            try:
                hook(msg, reply, duration)
            except Exception:  # logged and skipped, a guard's too: the reply is final
                log.exception("middleware %s.%s failed", type(mw).__name__, hook.__name__)


def _implementing(middleware: tuple[Middleware[Any], ...], hook: str) -> tuple[tuple[Middleware[Any], Any], ...]:
    """Each middleware whose class overrides ``hook``, with the bound hook, in order."""
    base = getattr(Middleware, hook)
    return tuple((mw, getattr(mw, hook)) for mw in middleware if getattr(type(mw), hook) is not base)


def _failed(mw: Middleware[Any], hook: Callable[..., Any]) -> bool:
    """In the ``except`` of a hook that raised: logged; True (raise it: the message is refused) for a guard's,
    else it is skipped."""
    log.exception("middleware %s.%s failed", type(mw).__name__, hook.__name__)
    return mw.guard


def _published(msg: InFlight, port: Port, error: BaseException | None) -> None:
    if error is None:
        port.settle(True)
        return
    log.error("[%s] reply could not be published; message goes back to the queue", msg.msg_id, exc_info=error)
    port.settle(False)


def _serialised(msg: InFlight, reply: Reply) -> tuple[Reply, bytes]:
    """Checked before anything is recorded or sent: a handler's unserialisable result becomes 99999."""
    try:
        return reply, encode_reply(reply)
    except Exception as exc:
        error = reply_for_exception(exc, context=f"[{msg.msg_id}] reply not serialisable: ")
        return error, encode_reply(error)


def _msg_id_text(sent: object, parsed: uuid.UUID) -> str:
    """``str(parsed)``: the text the caller sent when it is that already (a valid msg_id in lower case)."""
    if type(sent) is str and sent.islower() and len(sent) == 36:
        return sent
    return str(parsed)


def _plain(result: object) -> object:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result
