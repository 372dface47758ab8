"""The orchestrator's client: ``call(host, handler, command, data, timeout)`` → the reply.

One reply queue per client (never one per call), consumed by one background thread; replies are
matched to callers by correlation id. No reply in time → a ``-1`` reply carrying the ``msg_id``,
so that the caller can ask ``SystemHandler.result`` later. Thread-safe: share one client.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu import Consumer, Message, Queue

from kvmworker.protocol.codec import encode
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.protocol.urls import mask_secrets
from kvmworker.transport.connection import drain_this_connection, every_url, log_connection_loss, open_connection
from kvmworker.transport.names import (
    HEADER_EXPIRES_AT,
    HEADER_HOST,
    HEADER_ISSUED_AT,
    host_queue,
    host_queue_name,
    reply_queue,
)
from kvmworker.transport.publisher import Publisher
from kvmworker.trust.keys import KeyFileError

if TYPE_CHECKING:
    from kvmworker.events.consumer import Gap
    from kvmworker.events.model import Event

log = logging.getLogger("kvmworker.client")

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PendingCall:
    msg_id: str
    correlation_id: str
    future: Future  # resolves to a Reply


class Client:
    def __init__(
        self,
        broker_url: str,
        *,
        confirms: bool = True,
        persistent: bool = True,
        signer: Any = None,
        declare_host_queues: bool = True,
    ):
        """``declare_host_queues=False`` (the bridge): never create a host's queue, only publish to it."""
        self._declare_host_queues = declare_host_queues
        self._broker_url = broker_url
        self._consumer_conn = open_connection(broker_url)
        self._publisher = Publisher(open_connection(broker_url, confirms=confirms))
        self._persistent = persistent
        self._signer = signer
        self._reply_queue = reply_queue()
        self._pending: dict[str, Future] = {}
        self._hosts: dict[str, str] = {}  # correlation id → the host whose key must have signed the reply
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._consume_replies, name="kvmworker-replies", daemon=True)
        self._thread.start()

    # -- calling ---------------------------------------------------------------

    def call(
        self,
        host: str,
        handler: str,
        command: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        dry_run: bool = False,
        msg_id: str | None = None,
    ) -> Reply:
        envelope = Envelope(
            handler=handler, command=command, data=data or {}, dry_run=dry_run, timeout=timeout, msg_id=msg_id
        )
        return self.wait(self.submit(host, envelope, timeout=timeout), timeout)

    def submit(
        self, host: str, envelope: Envelope | dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> PendingCall:
        """Publish and return at once; the future resolves to the reply (the bridge awaits it)."""
        envelope = (envelope if isinstance(envelope, Envelope) else Envelope.model_validate(envelope)).ensure_msg_id()
        if envelope.timeout is None:
            envelope = envelope.model_copy(update={"timeout": timeout})
        msg_id = str(envelope.msg_id)
        correlation_id = uuid.uuid4().hex
        future: Future = Future()
        if not self._ready.wait(timeout):
            future.set_result(unknown_outcome(msg_id, "the broker could not be reached"))
            return PendingCall(msg_id, correlation_id, future)
        with self._lock:
            self._pending[correlation_id] = future
            self._hosts[correlation_id] = host
        try:
            self._publish(host, envelope, msg_id, correlation_id, timeout)
        except KeyFileError as exc:
            self.forget(correlation_id)
            log.error("[%s] not sent: %s", msg_id, exc)
            future.set_result(Reply.error(Code.UNAUTHENTICATED, f"not sent: the command could not be signed ({exc})"))
        except Exception as exc:
            self._declared.discard(host)
            if self.forget(correlation_id):
                log.warning("[%s] publish failed: %s", msg_id, mask_secrets(str(exc)))
                future.set_result(
                    unknown_outcome(
                        msg_id,
                        f"the broker did not confirm the command ({mask_secrets(str(exc))}): it may or may not"
                        " have reached the worker; SystemHandler.result with this msg_id tells",
                    )
                )
            else:
                # The broker took the message before the connection broke (the confirm was what got
                # lost), and the worker's reply already arrived: that reply is the true answer.
                log.info("[%s] publish reported %s, but the reply had already arrived", msg_id, mask_secrets(str(exc)))
        return PendingCall(msg_id, correlation_id, future)

    def wait(self, pending: PendingCall, timeout: float) -> Reply:
        try:
            return pending.future.result(timeout)
        except FutureTimeout:
            self.forget(pending.correlation_id)
            return unknown_outcome(pending.msg_id, f"no reply within {timeout:g} s")

    @property
    def signer(self) -> Any:
        """The orchestrator's signer (kvmworker.trust.signing.Signer), or None when this client does not sign."""
        return self._signer

    @property
    def ready(self) -> bool:
        """The reply consumer is connected: replies can be received."""
        return self._ready.is_set()

    def forget(self, correlation_id: str) -> bool:
        """Stop waiting for this call's reply; False if the reply consumer has already taken it."""
        with self._lock:
            self._hosts.pop(correlation_id, None)
            return self._pending.pop(correlation_id, None) is not None

    def _publish(self, host: str, envelope: Envelope, msg_id: str, correlation_id: str, timeout: float) -> None:
        body = encode(envelope.wire())
        issued = time.time()
        headers = {HEADER_HOST: host, HEADER_ISSUED_AT: round(issued, 6), HEADER_EXPIRES_AT: round(issued + timeout, 6)}
        if self._signer is not None:
            headers.update(self._signer.sign(body, msg_id, host, self._reply_queue.name, headers))
        # Straight to the host's queue through the default exchange: the same queue the ``kvmworker``
        # exchange routes ``host`` to, without a routing lookup per message (a Redis round trip each).
        self._publisher.publish(
            body,
            routing_key=host_queue_name(host),
            declare=self._declare_once(host),
            persistent=self._persistent,
            headers=headers,
            message_id=msg_id,
            correlation_id=correlation_id,
            reply_to=self._reply_queue.name,
        )

    def _declare_once(self, host: str) -> tuple[Queue, ...]:
        """The host's queue is declared with the first command to it, so that it waits for a late worker."""
        if host in self._declared or not self._declare_host_queues:
            return ()
        self._declared.add(host)
        return (host_queue(host),)

    # -- the reply consumer ----------------------------------------------------

    def _consume_replies(self) -> None:
        backoff, lost = 0.2, False
        while not self._closing.is_set():
            try:
                with self._consumer_conn.clone() as conn:
                    conn.ensure_connection(max_retries=every_url(conn))
                    raw = conn.connection  # drained directly: kombu would reconnect underneath, without the consumer
                    with Consumer(conn.channel(), queues=[self._reply_queue], on_message=self._on_reply, no_ack=True):
                        self._ready.set()
                        log.log(logging.INFO if lost else logging.DEBUG, "reply consumer on %s", conn.as_uri())
                        backoff = 0.2
                        while not self._closing.is_set():
                            drain_this_connection(conn, raw, 0.2)
            except Exception as exc:  # this thread must outlive any failure: callers depend on it
                self._ready.clear()
                if self._closing.is_set():
                    return
                lost = True
                log_connection_loss(log, self._consumer_conn, exc, "reply consumer", backoff)
                self._consumer_conn.maybe_switch_next()  # several URLs: the next node first
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _on_reply(self, message: Message) -> None:
        correlation_id = message.properties.get("correlation_id")
        host = self._hosts.get(correlation_id)
        if host is None:
            log.info("reply for an unknown or timed-out call (%s) dropped", correlation_id)
            return
        if self._signer is not None and not self._signer.reply_is_authentic(
            message.body, correlation_id, message.properties.get("message_id"), message.headers, host
        ):
            log.warning(
                "reply for %s dropped: its signature does not verify with the keys of the host the command went to"
                " (forged, or that host's key is not enrolled)",
                correlation_id,
            )
            return
        with self._lock:
            self._hosts.pop(correlation_id, None)
            future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            log.info("reply for an unknown or timed-out call (%s) dropped", correlation_id)
            return
        try:
            future.set_result(Reply.model_validate_json(message.body))
        except Exception as exc:
            future.set_result(Reply.error(Code.INTERNAL_ERROR, f"the worker's reply could not be read: {exc}"))

    # -- events (§7) -----------------------------------------------------------

    def events(
        self,
        host: str | None = None,
        source: str | None = None,
        *,
        queue: str | None = None,
        idle_timeout: float | None = None,
    ) -> Iterator[Event | Gap]:
        """Follow the events of ``host`` (any) from ``source`` (any), in order, each once; a ``Gap`` comes
        before the event that shows some were missed. ``queue``: a durable queue of that name, which keeps
        collecting while nobody follows (else a private one, from now on). With a signer, only events the
        host's key signed. See kvmworker.events.consumer."""
        from kvmworker.events.consumer import follow

        return follow(self._broker_url, host, source, queue=queue, signer=self._signer, idle_timeout=idle_timeout)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2)
        self._publisher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unknown_outcome(msg_id: str, detail: str) -> Reply:
    """-1: the command may or may not have run; ``SystemHandler.result`` tells later."""
    return Reply.error(Code.UNKNOWN_OUTCOME, detail, msg_id=msg_id)
