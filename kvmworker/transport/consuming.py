"""One consume-and-reconnect loop, for every consumer: the client's replies, and the worker's commands.

A consumer says what it does at each step by overriding the methods of ``Consuming`` (``start`` declares and
consumes; the others default to nothing); ``ConsumeLoop.run`` does the rest until ``stopping`` is set:
connect (each failover URL once), start, drain the very connection the consumer was declared on, and on any
failure log it, move to the next failover URL, pause (doubling, reset once a consumer was up) and start again.

Why not kombu's ``ConsumerMixin``: it would have to be overridden where it matters, leaving nothing of it.

- Its ``consume`` drains through ``Connection.drain_events`` and ``Connection.heartbeat_check``, which go through
  ``Connection.connection``: after a lost connection that quietly opens a new one to the next failover URL,
  with no channel and no consumer, and the loop waits there forever (tests/faults/test_cluster.py shows it in
  plain kombu). A lost connection must raise so that the consumer is set up again: ``drain_this_connection``.
- Its ``run`` retries only ``connection_errors + channel_errors``; anything else (a bug in a callback, a
  decoding surprise) ends the thread, and the reply consumer and the worker must outlive any failure. It paces
  restarts with a token bucket (one a second), not a pause that doubles, and never moves to the next failover
  URL before trying again (``maybe_switch_next``), so it keeps knocking at the node that just died.
- Its ``Consumer`` context takes ``conn.default_channel``, which reconnects quietly too, and its drain is
  fixed; the worker waits on its wake-up pipe as well as on the broker (``Consuming.drain``), publishes and
  settles between reads, on the consuming thread, and after a stop drains on until the commands in flight are
  settled (``busy``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kombu import Connection, Consumer

from kvmworker.transport.connection import drain_this_connection, every_url, log_connection_loss


class Consuming:
    """What a consumer does at each step of ``ConsumeLoop``; every method runs on the loop's thread."""

    what = "consumer"  # how the log names it: "consumer stopped (…); reconnecting in 0.5 s"

    def start(self, conn: Connection, channel: Any) -> Consumer:
        """Declare, and consume on ``channel``; return once the broker confirmed basic.consume."""
        raise NotImplementedError

    def up(self, conn: Connection, again: bool) -> None:
        """Consuming on ``conn``; ``again`` after a lost connection (or a failed start)."""

    def down(self) -> None:
        """Not consuming any more: the connection was lost, or the loop is stopping."""

    def drain_timeout(self) -> float:
        """How long one drain may wait for the broker before ``after_drain`` runs."""
        return 0.2

    def after_drain(self) -> None:
        """After each drain, on the consuming thread (e.g. settle finished messages on the consuming channel)."""

    def drain(self, conn: Connection, raw: Any) -> None:
        """One pass of the loop: wait for the broker (``drain_timeout``), then ``after_drain``. A consumer that
        waits on more than the broker's socket (the worker: its wake-up pipe too) replaces the whole pass."""
        drain_this_connection(conn, raw, self.drain_timeout())
        self.after_drain()

    def busy(self) -> bool:
        """Once stopping: drain on while this is true (messages in flight still to be settled)."""
        return False

    def attempting(self) -> None:
        """Before each connection attempt (e.g. a watchdog ping: reconnecting is progress too)."""

    def retrying(self, exc: BaseException, pause: float) -> None:
        """After a failure was logged, before the pause."""


class ConsumeLoop:
    def __init__(
        self,
        connection: Connection,
        consuming: Consuming,
        *,
        log: logging.Logger,
        stopping: threading.Event,
        first_pause: float = 0.2,
        max_pause: float = 5.0,
    ):
        self._connection = connection  # the template: cloned for each attempt, switched to the next URL on failure
        self._consuming = consuming
        self._log = log
        self._stopping = stopping
        self._first_pause, self._max_pause = first_pause, max_pause
        self._started = False  # in the current attempt: a consumer was up

    def run(self) -> None:
        """Consume until ``stopping`` is set; never raises."""
        pause, again = self._first_pause, False
        while not self._stopping.is_set():
            self._consuming.attempting()
            try:
                self._consume_once(again)
            except Exception as exc:  # the consumer must outlive any failure; unexpected ones are logged in full
                if self._stopping.is_set():
                    self._log.debug("%s stopped while stopping: %s", self._consuming.what, exc)
                    return
                if self._started:
                    pause = self._first_pause  # it had consumed since the last failure: a new incident
                again = True
                log_connection_loss(self._log, self._connection, exc, self._consuming.what, pause)
                self._consuming.retrying(exc, pause)
                self._connection.maybe_switch_next()  # several URLs: start again at the next node, not the lost one
                self._stopping.wait(pause)
                pause = min(pause * 2, self._max_pause)

    def _consume_once(self, again: bool) -> None:
        self._started = False
        with self._connection.clone() as conn:
            conn.ensure_connection(max_retries=every_url(conn))
            raw = conn.connection  # drained directly from now on: see drain_this_connection
            consumer = self._consuming.start(conn, conn.channel())
            self._started = True
            try:
                self._consuming.up(conn, again)
                while not self._stopping.is_set():
                    self._drain(conn, raw)
                consumer.cancel()
                while self._consuming.busy():
                    self._drain(conn, raw)
            finally:
                self._consuming.down()

    def _drain(self, conn: Connection, raw: Any) -> None:
        self._consuming.drain(conn, raw)
