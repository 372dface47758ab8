"""The guard in front of every command: signature (when keys are configured) and deadline.

Runs in ``on_receive``, before the body is decoded and before the journal claims the msg_id, so
that a refused message never runs and never takes a msg_id from a genuine one. A message whose
signature does not verify gets no reply at all: its ``reply_to`` is not covered by a signature, and
answering it would let anyone aim the worker's replies at any queue. It is still logged, journalled
and acked.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable

from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware, Refusal, Vouched
from kvmworker.dispatch.replies import reply_for_exception
from kvmworker.protocol.envelope import MAX_TIMEOUT_S, Reply
from kvmworker.protocol.errors import Expired, InvalidRequest, KvmError, Unauthenticated
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.settings import Settings
from kvmworker.trust.signing import WorkerKeys, load_worker_keys

log = logging.getLogger("kvmworker.trust")

CLOCK_SKEW_S = 5.0
OPEN_WARNING_EVERY_S = 3600.0
# Longer than any caller's timeout; the journal keeps msg_ids far longer, so a replay within validity is a duplicate.
MAX_VALIDITY_S = MAX_TIMEOUT_S


def create_trust(settings: Settings) -> TrustMiddleware:
    """The guard of ``settings``: signatures checked when ``trusted_keys_file`` is set (a bad file stops the start)."""
    return TrustMiddleware(settings.host, load_worker_keys(settings))


def warn_open(host: str) -> None:
    log.warning(
        "RUNNING OPEN: no trusted_keys_file is configured, so messages are NOT authenticated; anyone who can publish "
        "to the queue kvmworker.%s can command this host. Configure trusted_keys_file (see docs/trust.md).",
        host,
    )


class TrustMiddleware(Middleware[None]):
    guard = True

    def __init__(
        self,
        host: str,
        signer: WorkerKeys | None,
        *,
        skew: float = CLOCK_SKEW_S,
        clock: Callable[[], float] = time.time,
    ):
        self.host = host
        self.signer = signer
        self._skew = skew
        self._clock = clock
        self._next_open_warning = -math.inf

    def on_receive(self, msg: InFlight) -> Refusal | Vouched | None:
        self.warn_if_open()
        arrived = msg.delivery
        if self.signer is not None:
            try:
                self._verify_signature(arrived)
            except Exception as exc:
                # Nothing of this message is vouched for, its reply_to least of all: answer nobody (even when
                # verifying itself failed unexpectedly: the guard refuses what it cannot decide).
                return self._refuse(msg, exc, answer_sender=False)
        try:
            vouched = self._check_signed_for_us(arrived) if self.signer is not None else None
            self._check_deadline(arrived)
        except KvmError as exc:
            return self._refuse(msg, exc)
        return vouched

    def before_execute(self, msg: InFlight) -> Reply | None:
        """Again just before the handler: a message may expire while it waits behind its resource (an inline one
        waits for nothing: on_receive has just checked it, on this thread)."""
        if msg.inline:
            return None
        try:
            self._check_deadline(msg.delivery)
        except Expired as exc:
            return self._refuse(msg, exc).reply
        return None

    def warn_if_open(self) -> None:
        # Said at the serving worker's start (runtime.build_worker) or with the first message, then hourly; not at
        # construction, so that it lands in the serving worker's log and not in every CLI run that builds
        # a pipeline. Once per hour whoever says it first.
        now = self._clock()
        if self.signer is None and now >= self._next_open_warning:
            self._next_open_warning = now + OPEN_WARNING_EVERY_S
            warn_open(self.host)

    # -- the checks ------------------------------------------------------------

    def _verify_signature(self, arrived: Delivery) -> None:
        if not _is_uuid(arrived.message_id):
            raise Unauthenticated("a signed message must carry its msg_id (a UUID) as message_id")
        self.signer.verify(
            arrived.body,
            arrived.message_id,
            str(arrived.headers.get(HEADER_HOST, "")),
            arrived.reply_to,
            arrived.headers,
        )

    def _check_signed_for_us(self, arrived: Delivery) -> Vouched:
        """Signed for this host, with a sane validity: the signature holds until its end, plus the skew."""
        target = arrived.headers.get(HEADER_HOST)
        if target != self.host:
            raise Unauthenticated(f"signed for host {str(target)[:64]!r}, not for this host")
        issued = _seconds(arrived.headers.get(HEADER_ISSUED_AT))
        expires = _seconds(arrived.headers.get(HEADER_EXPIRES_AT))
        if issued > self._clock() + self._skew:
            raise Unauthenticated("issued in the future: check the clocks of the caller and of this host")
        if not 0 < expires - issued <= MAX_VALIDITY_S:
            raise Unauthenticated(f"the validity must be between 0 and {MAX_VALIDITY_S} s after issue")
        return Vouched(expires + self._skew)

    def _check_deadline(self, arrived: Delivery) -> None:
        value = arrived.headers.get(HEADER_EXPIRES_AT)
        if value is None:
            return  # open mode, a legacy caller: no deadline (a signed message always has one)
        expires = _seconds(value)
        late = self._clock() - expires
        if late > self._skew:
            raise Expired(
                f"expired {late:.1f} s before it could run; it was not executed", extra={"late_s": round(late, 3)}
            )

    def _refuse(self, msg: InFlight, exc: Exception, *, answer_sender: bool = True) -> Refusal:
        reply = Reply.from_error(exc) if isinstance(exc, KvmError) else reply_for_exception(exc)
        answered = msg.reply_to if answer_sender else None
        to = f"answered to {answered}" if answered else "no reply (reply_to absent or not signed)"
        # INFO: the command's own line (kvmworker.commands) is the one warning, with the code and the detail
        log.info("[%s] refused %d: %s; %s", msg.msg_id, reply.code, (reply.data or {}).get("detail"), to)
        return Refusal(reply, answer_sender=answer_sender)


def _seconds(value: object) -> float:
    """A time header as seconds; a signed one was already checked to be a finite number."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or isinstance(value, bool):
        raise InvalidRequest(f"x-kvm-issued-at / x-kvm-expires-at must be seconds since the epoch: {str(value)[:40]!r}")
    return seconds


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
