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

from kvmworker.dispatch.dispatcher import MiddlewareChain
from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.request import Request
from kvmworker.protocol.envelope import MAX_TIMEOUT_S, Reply
from kvmworker.protocol.errors import Expired, InvalidRequest, KvmError, Unauthenticated
from kvmworker.settings import Settings
from kvmworker.transport.names import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
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


class TrustMiddleware(Middleware):
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

    def on_receive(self, request: Request) -> Reply | None:
        self.warn_if_open()
        try:
            if self.signer is not None:
                self._authenticate(request)
            self._check_deadline(request)
        except KvmError as exc:
            return self._refuse(request, exc)
        return None

    def before_execute(self, request: Request) -> Reply | None:
        """Again just before the handler: a message may expire while it waits behind its resource."""
        try:
            self._check_deadline(request)
        except Expired as exc:
            return self._refuse(request, exc)
        return None

    def warn_if_open(self) -> None:
        # Said at the serving worker's start (announce_open) or with the first message, then hourly; not at
        # construction, so that it lands in the serving worker's log and not in every CLI run that builds
        # a dispatcher. Once per hour whoever says it first.
        now = self._clock()
        if self.signer is None and now >= self._next_open_warning:
            self._next_open_warning = now + OPEN_WARNING_EVERY_S
            warn_open(self.host)

    # -- the checks ------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        try:
            self._verify_signature(request)
        except Exception:
            # Nothing of this message is vouched for, its reply_to least of all: answer nobody (even when
            # verifying itself failed unexpectedly and the guard turns that into a refusal).
            request.reply_to = None
            raise
        target = request.headers.get(HEADER_HOST)
        if target != self.host:
            raise Unauthenticated(f"signed for host {str(target)[:64]!r}, not for this host")
        request.verified_until = self._check_issued(request)

    def _verify_signature(self, request: Request) -> None:
        if not _is_uuid(request.message_id):
            raise Unauthenticated("a signed message must carry its msg_id (a UUID) as message_id")
        self.signer.verify(
            request.body,
            request.message_id,
            str(request.headers.get(HEADER_HOST, "")),
            request.reply_to,
            request.headers,
        )

    def _check_issued(self, request: Request) -> float:
        """The signed validity is sane; returns its end (the signature verifies until then, plus the skew)."""
        issued = _seconds(request.headers.get(HEADER_ISSUED_AT))
        expires = _seconds(request.headers.get(HEADER_EXPIRES_AT))
        if issued > self._clock() + self._skew:
            raise Unauthenticated("issued in the future: check the clocks of the caller and of this host")
        if not 0 < expires - issued <= MAX_VALIDITY_S:
            raise Unauthenticated(f"the validity must be between 0 and {MAX_VALIDITY_S} s after issue")
        return expires + self._skew

    def _check_deadline(self, request: Request) -> None:
        value = request.headers.get(HEADER_EXPIRES_AT)
        if value is None:
            return  # open mode, a legacy caller: no deadline (a signed message always has one)
        expires = _seconds(value)
        late = self._clock() - expires
        if late > self._skew:
            raise Expired(
                f"expired {late:.1f} s before it could run; it was not executed", extra={"late_s": round(late, 3)}
            )

    def _refuse(self, request: Request, exc: KvmError) -> Reply:
        request.assign_msg_id()  # so that the journal files the refusal under the message's own msg_id
        to = f"answered to {request.reply_to}" if request.reply_to else "no reply (reply_to absent or not signed)"
        # INFO: the command's own line (kvmworker.commands) is the one warning, with the code and the detail
        log.info("[%s] refused %d: %s; %s", request.msg_id, exc.code, exc.detail, to)
        return Reply.from_error(exc)


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


def announce_open(chain: MiddlewareChain, host: str) -> None:
    """At the worker's start: RUNNING OPEN now, and from the guard again in an hour (not with the first message)."""
    guard = next((mw for mw in chain.middleware if isinstance(mw, TrustMiddleware)), None)
    if guard is None:
        warn_open(host)
    else:
        guard.warn_if_open()


def reply_signer(chain: MiddlewareChain) -> WorkerKeys | None:
    """The worker signs its replies with its own key, held beside the keys its trust middleware verifies with."""
    return next((mw.signer for mw in chain.middleware if isinstance(mw, TrustMiddleware)), None)
