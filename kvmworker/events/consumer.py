"""Following events: ``follow(url, host, source)`` yields each event once, in order, and says when some were missed.

Over a broker it consumes a queue bound to ``kvmworker.events`` with ``<host|#>.<source|*>.*``: a private
one by default (exclusive, gone with the consumer: it sees events from the moment it is bound), or a durable
named one (``queue=``) that keeps collecting while the consumer is away or the broker restarts. It reconnects
by itself. On ``memory://`` it subscribes to the process's fan-out. ``GapDetector`` turns ``seq`` into
meaning: a repeated ``seq`` (an event published again after a worker crash) is dropped, a skipped one is a
``Gap`` yielded before the event that revealed it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kombu import Consumer, Message, Queue

from kvmworker.events.fanout import LOCAL, Fanout
from kvmworker.events.model import WORKER_STATE, Event, binding_key
from kvmworker.events.sender import EVENT_CORRELATION, events_exchange
from kvmworker.protocol.urls import mask_secrets
from kvmworker.transport.connection import drain_this_connection, every_url, log_connection_loss, open_connection

log = logging.getLogger("kvmworker.events")

PRIVATE_PREFIX = "kvmworker.events."
PREFETCH = 200
POLL_S = 0.25


@dataclass(frozen=True)
class Gap:
    """Events ``first``…``last`` of ``host`` were not seen (``reset``: the host's sequence started again)."""

    host: str
    first: int
    last: int
    reset: bool = False

    @property
    def missed(self) -> int:
        return 0 if self.reset else self.last - self.first + 1

    def describe(self) -> str:
        if self.reset:
            return f"{self.host}: its sequence started again at {self.last + 1} (its state directory was lost?)"
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.host}: missed {self.missed} event(s), seq {span}"

    def to_dict(self) -> dict[str, Any]:
        return {"gap": True, "host": self.host, "first": self.first, "last": self.last, "reset": self.reset}


class GapDetector:
    """Per host: the last ``seq`` seen. The first event of a host sets the baseline (nothing is known before)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, event: Event) -> tuple[Gap | None, bool]:
        """(the gap this event reveals, whether to deliver it: False for a repeat)."""
        last = self._last.get(event.host)
        if last is None or event.seq == last + 1:
            self._last[event.host] = event.seq
            return None, True
        if event.seq > last + 1:
            self._last[event.host] = event.seq
            return Gap(event.host, last + 1, event.seq - 1), True
        if (event.source, event.kind) == WORKER_STATE and event.state == "online" and event.seq < last:
            self._last[event.host] = event.seq  # a worker that lost its state directory counts from 1 again
            return Gap(event.host, last + 1, event.seq - 1, reset=True), True
        return None, False  # seen already: published again after a crash, or redelivered

    def last_seen(self, host: str) -> int | None:
        return self._last.get(host)


def follow(
    url: str,
    host: str | None = None,
    source: str | None = None,
    *,
    queue: str | None = None,
    signer: Any = None,
    idle_timeout: float | None = None,
    fanout: Fanout | None = None,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Event | Gap]:
    """Events (and gaps) as they come, until the caller stops iterating (``close()``), ``stop`` is set, or
    ``idle_timeout`` seconds pass without one. ``ready`` is set once the queue is bound: events from then on
    are seen."""
    detector = GapDetector()
    until = _Until(idle_timeout, stop or threading.Event())
    if url.startswith("memory:"):
        raw = _local(fanout or LOCAL, host, source, until, ready)
    else:
        raw = _from_broker(url, host, source, queue, signer, until, ready)
    for event in raw:
        gap, fresh = detector.check(event)
        if gap is not None:
            log.warning("events: %s", gap.describe())
            yield gap
        if fresh:
            yield event


class _Until:
    """Go on until ``stop`` is set or ``idle`` seconds pass without an event (``seen()`` restarts the clock)."""

    def __init__(self, idle: float | None, stop: threading.Event):
        self._idle, self._stop = idle, stop
        self.seen()

    def seen(self) -> None:
        self._deadline = None if self._idle is None else time.monotonic() + self._idle

    def __bool__(self) -> bool:
        return not self._stop.is_set() and (self._deadline is None or time.monotonic() < self._deadline)

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)


def _local(
    fanout: Fanout, host: str | None, source: str | None, until: _Until, ready: threading.Event | None
) -> Iterator[Event]:
    with fanout.subscribe(host, source) as subscription:
        if ready is not None:
            ready.set()
        while until:
            event = subscription.get(POLL_S)
            if event is not None:
                until.seen()
                yield event


def _from_broker(
    url: str,
    host: str | None,
    source: str | None,
    queue_name: str | None,
    signer: Any,
    until: _Until,
    ready: threading.Event | None,
) -> Iterator[Event]:
    key = binding_key(host, source)
    if queue_name:
        queue = Queue(queue_name, exchange=events_exchange(), routing_key=key, durable=True)
    else:
        name = PRIVATE_PREFIX + uuid.uuid4().hex
        queue = Queue(
            name, exchange=events_exchange(), routing_key=key, durable=False, exclusive=True, auto_delete=True
        )
    received: deque[Message] = deque()
    connection = open_connection(url)
    backoff = 0.2
    try:
        while until:
            try:
                with connection.clone() as conn:
                    conn.ensure_connection(max_retries=every_url(conn))
                    raw = conn.connection
                    channel = conn.channel()
                    consumer = Consumer(channel, queues=[queue], on_message=received.append, auto_declare=True)
                    consumer.qos(prefetch_count=PREFETCH)
                    with consumer:
                        if ready is not None:
                            ready.set()
                        backoff = 0.2
                        while until:
                            drain_this_connection(conn, raw, POLL_S)
                            while received:
                                message = received.popleft()
                                event = _read(message, signer)
                                if event is not None:
                                    until.seen()
                                    yield event
                                message.ack()  # after the caller has taken it: a crash meanwhile redelivers
                        if not queue_name:
                            queue(channel).delete()
                        return
            except GeneratorExit:
                raise
            except Exception as exc:
                received.clear()  # unacknowledged: the broker delivers them again (a durable queue) or they died
                log_connection_loss(log, connection, exc, "event consumer", backoff)
                connection.maybe_switch_next()
                until.wait(backoff)
                backoff = min(backoff * 2, 5.0)
    finally:
        connection.release()


def _read(message: Message, signer: Any) -> Event | None:
    try:
        event = Event.from_body(message.body)
    except Exception as exc:
        log.warning("an event that is not one was dropped: %s", mask_secrets(str(exc))[:200])
        return None
    if signer is not None and not signer.reply_is_authentic(
        message.body, EVENT_CORRELATION, message.properties.get("message_id"), message.headers or {}, event.host
    ):
        log.warning(
            "event %s of %s dropped: its signature does not verify with that host's keys", event.seq, event.host
        )
        return None
    return event
