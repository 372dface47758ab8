"""Record every message and its reply, and run each msg_id at most once (exactly-once effects).

Delivery is at least once: a broker redelivers what a crashed worker had not acked, and a client
may publish twice. Before a command runs, its msg_id is claimed here:

- already answered → the stored reply is sent again, the command does not run;
- running right now (a duplicate arrived meanwhile) → wait for it, send the same reply;
- claimed by an earlier worker process that died before recording a reply → it may or may not
  have taken effect. A command that converges when repeated (``idempotent`` or read-only) runs again,
  up to ``MAX_ATTEMPTS`` starts in all (a message that kills the worker every time is not run for
  ever); any other is not run again: the answer is -1 (outcome unknown), state ``interrupted``;
- otherwise → claimed, recorded as ``running``, and run.

The reply is recorded in ``after_reply``, before it is published, so a crash between publishing
and acking still finds it on redelivery.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.request import Request
from kvmworker.journal.entry import Entry, Received
from kvmworker.journal.redaction import redact, redact_text
from kvmworker.journal.store import (
    ANSWERED,
    INTERRUPTED,
    MAX_RECORD_PART,
    REFUSED,
    RUNNING,
    JournalStore,
    journal_path,
)
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.settings import Settings
from kvmworker.statefiles import secure_state_dir

log = logging.getLogger("kvmworker.journal")

OWNER, DUPLICATE = "owner", "duplicate"
MAX_PARSED_BODY = 1024 * 1024  # larger bodies are refused unread, so the journal need not hold them whole
MAX_RAW_TEXT = 4096  # what is kept of a body that is not JSON: enough to see what it was


def create_journal(settings: Settings, on_duplicate: Callable[[str], None] | None = None) -> JournalMiddleware:
    secure_state_dir(settings.state_dir)  # before anything is written there: 0700, and files 0600
    store = JournalStore(
        journal_path(settings.state_dir),
        max_age_days=settings.journal_max_age_days,
        max_mb=settings.journal_max_mb,
    )
    abandoned = store.close_abandoned(Code.UNKNOWN_OUTCOME.msg, _INTERRUPTED_DETAIL)
    if abandoned:
        log.warning("%d command(s) were cut short when the worker last stopped: answered -1 (interrupted)", abandoned)
    store.prune()  # a worker that was down for a while starts within its limits
    return JournalMiddleware(store, settings.host, on_duplicate=on_duplicate)


class JournalMiddleware(Middleware):
    def __init__(self, store: JournalStore, host: str, *, on_duplicate: Callable[[str], None] | None = None):
        self.store = store
        self._host = host
        self._on_duplicate = on_duplicate or (lambda how: None)
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        # id(request) → OWNER | DUPLICATE, between before_execute and after_reply of that request
        self._roles: dict[int, str] = {}

    # -- hooks -----------------------------------------------------------------

    def before_execute(self, request: Request) -> Reply | None:
        with self._lock:
            pending = self._running.get(request.msg_id)
            entry = None if pending else self.store.find(request.msg_id)
            rerun = entry is not None and _may_rerun(request, entry)
            role = DUPLICATE if pending or (entry and entry.state != REFUSED and not rerun) else OWNER
            self._roles[id(request)] = role
            if role == OWNER:
                self._running[request.msg_id] = Future()
        if pending is not None:
            return self._wait_for_first(request, pending)
        if role == DUPLICATE:
            return self._answer_from_journal(request, entry)
        if rerun:
            log.warning(
                "[%s] was cut short by a worker crash (attempt %d of %d); it converges, so it runs again",
                request.msg_id,
                _attempts(entry) + 1,
                MAX_ATTEMPTS,
            )
            self._on_duplicate("rerun")
        if not request.read_only:  # a claim, so that a crash mid-command is known on redelivery
            self.store.begin(self._received(request, "executed"))
        return None

    def after_reply(self, request: Request, reply: Reply, duration: float) -> None:
        with self._lock:
            role = self._roles.pop(id(request), None)
        if role == DUPLICATE:
            return
        if role == OWNER:
            self._finish(request, reply, duration)
            return
        self.store.refused(self._received(request, REFUSED, excerpt=True), _stored(reply), duration)

    # -- SystemHandler.result --------------------------------------------------

    def result(self, msg_id: str) -> Reply:
        """The stored reply of ``msg_id``, or -1 saying why there is none (running, interrupted, never seen)."""
        with self._lock:
            running = msg_id in self._running
        if running:
            return _unknown(msg_id, RUNNING, "the command is still running; ask again later")
        entry = self.store.find(msg_id)
        if entry is None:
            return _unknown(msg_id, "never_seen", "this worker has no record of that msg_id (not received yet?)")
        if entry.state == RUNNING:
            return _unknown(msg_id, INTERRUPTED, _INTERRUPTED_DETAIL)
        return Reply.model_validate(entry.reply)

    # -- the cases -------------------------------------------------------------

    def _wait_for_first(self, request: Request, pending: Future) -> Reply:
        if request.inline:  # it runs on the consumer thread, which must never wait for another command
            return _unknown(request.msg_id, RUNNING, "a command with this msg_id is still running; ask again later")
        log.info("[%s] duplicate while the first delivery runs: waiting for its reply", request.msg_id)
        self.store.add_delivery(request.msg_id, self._delivery(request, "waited"))
        self._on_duplicate("waited")
        return pending.result()

    def _answer_from_journal(self, request: Request, entry: Entry) -> Reply:
        state, stored = entry.state, entry.reply
        if state == RUNNING or (state == INTERRUPTED and request.safe_to_rerun):
            # A previous worker process claimed it and died before recording a reply.
            poisoned = request.safe_to_rerun  # it would have run again, but every attempt killed the worker
            detail = _poisoned_detail(_attempts(entry)) if poisoned else _INTERRUPTED_DETAIL
            log.warning("[%s] was interrupted by a worker crash; not running it again: %s", request.msg_id, detail)
            reply = _unknown(request.msg_id, INTERRUPTED, detail)
            self.store.add_delivery(request.msg_id, self._delivery(request, INTERRUPTED))
            self.store.finish(request.msg_id, INTERRUPTED, _stored(reply), 0.0)
            self._on_duplicate(INTERRUPTED)
            return reply
        log.info("[%s] already answered (%s): sending the recorded reply again", request.msg_id, state)
        self.store.add_delivery(request.msg_id, self._delivery(request, "journal"))
        self._on_duplicate(INTERRUPTED if state == INTERRUPTED else "journal")
        return Reply.model_validate(stored)

    def _finish(self, request: Request, reply: Reply, duration: float) -> None:
        msg_id = request.msg_id
        try:
            if request.read_only:
                self.store.answered(self._received(request, "executed"), _stored(reply), duration)
            else:
                self.store.finish(msg_id, ANSWERED, _stored(reply), duration)
        finally:
            # Waiting duplicates get the reply even if it could not be recorded.
            with self._lock:
                pending = self._running.pop(msg_id, None)
            if pending is not None:
                pending.set_result(reply)

    # -- what is recorded ------------------------------------------------------

    def _received(self, request: Request, answered: str, *, excerpt: bool = False) -> Received:
        """What is recorded of ``request``; of a refused one (``excerpt``) only the start of its body."""
        envelope = request.envelope
        return Received(
            msg_id=request.msg_id,
            received_at=request.received_at,
            host=self._host,
            handler=envelope.handler if envelope else None,
            command=envelope.command if envelope else None,
            dry_run=bool(envelope and envelope.dry_run),
            redelivered=request.redelivered,
            envelope=_excerpt(request.body) if excerpt else _recorded_body(request.body),
            properties={
                "content_type": request.content_type,
                "message_id": request.message_id,
                "correlation_id": request.correlation_id,
                "reply_to": request.reply_to,
                "headers": redact(request.headers),
            },
            delivery=self._delivery(request, answered),
            expires_at=request.verified_until,
        )

    @staticmethod
    def _delivery(request: Request, answered: str) -> dict[str, Any]:
        return {
            "received_at": request.received_at,
            "redelivered": request.redelivered,
            "correlation_id": request.correlation_id,
            "reply_to": request.reply_to,
            "answered": answered,
        }


MAX_ATTEMPTS = 3
"""How often a command that converges is run when each attempt ends in a worker crash (a poison message)."""


def _attempts(entry: Entry) -> int:
    return sum(1 for delivery in entry.deliveries if delivery.get("answered") == "executed")


def _may_rerun(request: Request, entry: Entry) -> bool:
    """Cut short by a crash (still ``running``, or closed as ``interrupted`` at start), converges, attempts left."""
    return request.safe_to_rerun and entry.state in (RUNNING, INTERRUPTED) and _attempts(entry) < MAX_ATTEMPTS


def _poisoned_detail(attempts: int) -> str:
    return (
        f"this command was started {attempts} times and the worker died each time; it is not run again. "
        "The journal keeps it (kvmworker journal show); fix the cause, then send it with a new msg_id"
    )


_INTERRUPTED_DETAIL = (
    "the worker stopped while this command ran; it may or may not have taken effect and is not run "
    "again: check the state, then send it with a new msg_id"
)


def _unknown(msg_id: str, state: str, detail: str) -> Reply:
    return Reply.error(Code.UNKNOWN_OUTCOME, detail, state=state, msg_id=msg_id)


def _stored(reply: Reply) -> dict[str, Any]:
    return redact(reply.model_dump(mode="json"))


def _recorded_body(body: bytes) -> Any:
    """The envelope as it came (unknown fields included), redacted; a body that is not JSON as masked text."""
    try:
        if len(body) > MAX_PARSED_BODY:  # an oversize body is refused anyway: keep its start, never parse it whole
            raise ValueError("too large to record whole")
        return redact(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = body[:MAX_RAW_TEXT].decode("utf-8", errors="replace")
        return {"raw": redact_text(text), "raw_bytes": len(body)}


def _excerpt(body: bytes) -> Any:
    """A refused body: whole if it is a small JSON document, else its first bytes as text (``MAX_RECORD_PART``)."""
    if len(body) <= MAX_RECORD_PART:
        return _recorded_body(body)
    # Half the bound: escaped as JSON (quotes, backslashes) the excerpt still fits it.
    text = body[: MAX_RECORD_PART // 2].decode("utf-8", errors="replace")
    return {"raw": redact_text(text), "raw_bytes": len(body)}
