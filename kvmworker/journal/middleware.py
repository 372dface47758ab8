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
and acking still finds it on redelivery. A read-only command's record is not waited for (a crash may lose it:
it runs again); the AMQP worker's consumer thread builds it once its pass's replies are written (``_finish``).
Which of these cases a message is (``Claim``) is kept in its slot.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kvmworker.dispatch.deferred import defer, deferring
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware
from kvmworker.journal.entry import Entry, Received
from kvmworker.journal.redaction import may_hold_secret, redact, redact_text
from kvmworker.journal.store import (
    ANSWERED,
    INTERRUPTED,
    MAX_RECORD_PART,
    REFUSED,
    RUNNING,
    JournalStore,
    JsonText,
    journal_path,
    json_text,
    properties_json,
)
from kvmworker.protocol.codec import json_encoding
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.settings import Settings
from kvmworker.statefiles import secure_state_dir

log = logging.getLogger("kvmworker.journal")

MAX_PARSED_BODY = 1024 * 1024  # larger bodies are refused unread, so the journal need not hold them whole
MAX_RAW_TEXT = 4096  # what is kept of a body that is not JSON: enough to see what it was


def create_journal(settings: Settings, on_duplicate: Callable[[str], None] | None = None) -> JournalMiddleware:
    secure_state_dir(settings.state_dir)  # before anything is written there: 0700, and files 0600
    store = JournalStore(
        journal_path(settings.state_dir),
        max_age_days=settings.journal_max_age_days,
        max_mb=settings.journal_max_mb,
        remember_ids=True,  # this process writes the file: a new msg_id is known new without reading it
    )
    abandoned = store.close_abandoned(Code.UNKNOWN_OUTCOME.msg, _INTERRUPTED_DETAIL)
    if abandoned:
        log.warning("%d command(s) were cut short when the worker last stopped: answered -1 (interrupted)", abandoned)
    store.prune()  # a worker that was down for a while starts within its limits
    return JournalMiddleware(store, settings.host, on_duplicate=on_duplicate)


class Role(Enum):
    OWNER = "owner"
    """This delivery runs the command and records its reply."""
    DUPLICATE = "duplicate"
    """Its msg_id is running or answered already: it gets that reply, and records nothing more."""


@dataclass
class Claim:
    """The journal's slot on a message: its role, once ``before_execute`` decided it (None: refused before)."""

    role: Role | None = None


class JournalMiddleware(Middleware[Claim]):
    def __init__(self, store: JournalStore, host: str, *, on_duplicate: Callable[[str], None] | None = None):
        self.store = store
        self._host = host
        self._on_duplicate = on_duplicate or (lambda how: None)
        self._lock = threading.Lock()
        self._running: dict[str, Future | None] = {}
        # Read-only commands answered on the consumer thread whose record waits for the end of its pass (see
        # ``_finish``): msg_id → what to record. Each stays in ``_running`` until recorded.
        self._unrecorded: dict[str, tuple[InFlight, Reply, float]] = {}
        self._pass_deferred = False  # ``_record_pass`` waits for the end of the pass: one per pass

    def new_state(self) -> Claim:
        return Claim()

    # -- hooks -----------------------------------------------------------------

    def before_execute(self, msg: InFlight) -> Reply | None:
        if msg.msg_id in self._unrecorded:  # a duplicate of one answered in this pass finds it recorded, as any other
            self._record_deferred(msg.msg_id)
        with self._lock:
            pending, entry = self._pending(msg.msg_id), None
            if pending is None:
                entry = self.store.find(msg.msg_id)
            rerun = entry is not None and _may_rerun(msg, entry)
            role = Role.DUPLICATE if pending or (entry and entry.state != REFUSED and not rerun) else Role.OWNER
            msg.state_of(self).role = role
            if role is Role.OWNER:
                self._running[msg.msg_id] = None  # a Future only once a duplicate waits for it (``_pending``)
        if pending is not None:
            return self._wait_for_first(msg, pending)
        if role is Role.DUPLICATE:
            return self._answer_from_journal(msg, entry)
        if rerun:
            log.warning(
                "[%s] was cut short by a worker crash (attempt %d of %d); it converges, so it runs again",
                msg.msg_id,
                _attempts(entry) + 1,
                MAX_ATTEMPTS,
            )
            self._on_duplicate("rerun")
        if not msg.read_only:  # a claim, so that a crash mid-command is known on redelivery
            self.store.begin(self._received(msg, "executed"))
        return None

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        role = msg.state_of(self).role
        if role is Role.DUPLICATE:
            return
        if role is Role.OWNER:
            self._finish(msg, reply, duration)
            return
        self.store.refused(self._received(msg, REFUSED, excerpt=True), _stored(reply), duration)

    def _pending(self, msg_id: str) -> Future | None:
        """The lock held: the reply of ``msg_id``'s first delivery if it runs now (made here, for its duplicate)."""
        if msg_id not in self._running:
            return None
        pending = self._running[msg_id]
        if pending is None:
            pending = self._running[msg_id] = Future()
        return pending

    # -- SystemHandler.result --------------------------------------------------

    def result(self, msg_id: str) -> Reply:
        """The stored reply of ``msg_id``, or -1 saying why there is none (running, interrupted, never seen)."""
        if self._unrecorded:
            self._record_deferred(msg_id)
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

    def _wait_for_first(self, msg: InFlight, pending: Future) -> Reply:
        if msg.inline:  # it runs on the consumer thread, which must never wait for another command
            return _unknown(msg.msg_id, RUNNING, "a command with this msg_id is still running; ask again later")
        log.info("[%s] duplicate while the first delivery runs: waiting for its reply", msg.msg_id)
        self.store.add_delivery(msg.msg_id, self._delivery(msg, "waited"))
        self._on_duplicate("waited")
        return pending.result()

    def _answer_from_journal(self, msg: InFlight, entry: Entry) -> Reply:
        state, stored = entry.state, entry.reply
        if state == RUNNING or (state == INTERRUPTED and msg.safe_to_rerun):
            # A previous worker process claimed it and died before recording a reply.
            poisoned = msg.safe_to_rerun  # it would have run again, but every attempt killed the worker
            detail = _poisoned_detail(_attempts(entry)) if poisoned else _INTERRUPTED_DETAIL
            log.warning("[%s] was interrupted by a worker crash; not running it again: %s", msg.msg_id, detail)
            reply = _unknown(msg.msg_id, INTERRUPTED, detail)
            self.store.add_delivery(msg.msg_id, self._delivery(msg, INTERRUPTED))
            self.store.finish(msg.msg_id, INTERRUPTED, _stored(reply), 0.0)
            self._on_duplicate(INTERRUPTED)
            return reply
        log.info("[%s] already answered (%s): sending the recorded reply again", msg.msg_id, state)
        self.store.add_delivery(msg.msg_id, self._delivery(msg, "journal"))
        self._on_duplicate(INTERRUPTED if state == INTERRUPTED else "journal")
        return Reply.model_validate(stored)

    def _finish(self, msg: InFlight, reply: Reply, duration: float) -> None:
        """Record the reply. A read-only command's record (not waited for: a crash may lose it, and it is safe to
        run again) is built once the consumer thread has written its pass's replies, when it answered on that
        thread (``dispatch.deferred``), with the others of that pass (``_record_pass``); until then its msg_id stays
        running, and whatever looks it up first (a duplicate, ``result``) records it then."""
        msg_id = msg.msg_id
        if msg.read_only and deferring():
            with self._lock:
                self._unrecorded[msg_id] = (msg, reply, duration)
                first, self._pass_deferred = not self._pass_deferred, True
            if first:
                defer(self._record_pass)
            return
        self._record(msg, reply, duration)

    def _record_deferred(self, msg_id: str) -> None:
        with self._lock:
            held = self._unrecorded.pop(msg_id, None)
        if held is not None:
            self._record(*held)

    def _record_pass(self) -> None:
        """At the end of a pass: the records of the read-only commands it answered (less those a duplicate or
        ``result`` recorded first), handed to the store as one write (``answered_all``); as ``_record`` each."""
        with self._lock:
            held, self._unrecorded, self._pass_deferred = list(self._unrecorded.values()), {}, False
        try:
            records = []
            for msg, reply, duration in held:
                try:
                    records.append((self._received(msg, "executed"), _stored_text(reply, msg.reply_body), duration))
                except Exception:  # as a write that fails: logged, and only this record is lost
                    log.exception("[%s] the journal's record could not be made; it is lost", msg.msg_id)
            if records:
                self.store.answered_all(records)
        finally:
            self._release([(msg.msg_id, reply) for msg, reply, _ in held])

    def _record(self, msg: InFlight, reply: Reply, duration: float) -> None:
        msg_id = msg.msg_id
        try:
            stored = _stored_text(reply, msg.reply_body)
            if msg.read_only:
                self.store.answered(self._received(msg, "executed"), stored, duration)
            else:
                self.store.finish(msg_id, ANSWERED, stored, duration)
        finally:
            self._release([(msg_id, reply)])

    def _release(self, answered: list[tuple[str, Reply]]) -> None:
        """The msg_ids are no longer running: duplicates waiting for them get the reply, even if it could not be
        recorded."""
        with self._lock:
            waiting = [(self._running.pop(msg_id, None), reply) for msg_id, reply in answered]
        for pending, reply in waiting:
            if pending is not None:
                pending.set_result(reply)

    # -- what is recorded ------------------------------------------------------

    def _received(self, msg: InFlight, answered: str, *, excerpt: bool = False) -> Received:
        """What is recorded of ``msg``; of a refused one (``excerpt``) only the start of its body."""
        envelope, arrived = msg.envelope, msg.delivery
        properties = {
            "content_type": arrived.content_type,
            "message_id": arrived.message_id,
            "correlation_id": arrived.correlation_id,
            "reply_to": arrived.reply_to,
            "headers": dict(arrived.headers),
        }
        return Received(
            msg_id=msg.msg_id,
            received_at=arrived.received_at,
            host=self._host,
            handler=envelope.handler if envelope else None,
            command=envelope.command if envelope else None,
            dry_run=bool(envelope and envelope.dry_run),
            redelivered=arrived.redelivered,
            envelope=_excerpt(arrived.body) if excerpt else _recorded_body(arrived.body, parsed=envelope is not None),
            properties=_redacted(properties) if excerpt else _redacted_text(properties),
            delivery=self._delivery(msg, answered),
            expires_at=msg.verified_until,
        )

    @staticmethod
    def _delivery(msg: InFlight, answered: str) -> dict[str, Any]:
        """This delivery of the message; ``reply_to`` is where its reply went (None: nowhere)."""
        arrived = msg.delivery
        return {
            "received_at": arrived.received_at,
            "redelivered": arrived.redelivered,
            "correlation_id": arrived.correlation_id,
            "reply_to": msg.reply_to,
            "answered": answered,
        }


MAX_ATTEMPTS = 3
"""How often a command that converges is run when each attempt ends in a worker crash (a poison message)."""


def _attempts(entry: Entry) -> int:
    return sum(1 for delivery in entry.deliveries if delivery.get("answered") == "executed")


def _may_rerun(msg: InFlight, entry: Entry) -> bool:
    """Cut short by a crash (still ``running``, or closed as ``interrupted`` at start), converges, attempts left."""
    return msg.safe_to_rerun and entry.state in (RUNNING, INTERRUPTED) and _attempts(entry) < MAX_ATTEMPTS


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


def _redacted(properties: dict[str, Any]) -> dict[str, Any]:
    return {**properties, "headers": redact(properties["headers"])}


def _redacted_text(properties: dict[str, Any]) -> dict[str, Any] | JsonText:
    """``_redacted``, as JSON text when there is nothing in it to redact (it is encoded once, to be recorded)."""
    text = properties_json(properties)
    return json_text(text) if not may_hold_secret(text) else _redacted(properties)


def _stored_text(reply: Reply, body: bytes | None = None) -> dict[str, Any] | JsonText:
    """``_stored``, as the JSON text pydantic writes when there is nothing in it to redact (no parse, no copy).
    ``body``: that text encoded already (the reply as published), so that it is not written twice."""
    text = body.decode() if body is not None else reply.model_dump_json()
    return json_text(text, reply.code) if not may_hold_secret(text) else _stored(reply)


def _recorded_body(body: bytes, *, parsed: bool = False) -> Any:
    """The envelope as it came (unknown fields included), redacted; a body that is not JSON as masked text.

    ``parsed``: the body decoded as a JSON object already (it was admitted). Then, when it is UTF-8 with nothing
    to redact in it, its text is recorded as it came: the same JSON, without parsing and encoding it again."""
    if parsed and len(body) <= MAX_PARSED_BODY and json_encoding(body) == "utf-8":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and not may_hold_secret(text):
            return json_text(text)
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
