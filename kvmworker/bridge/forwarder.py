"""Envelope → the host's worker → reply, without ever blocking the event loop on the broker.

Over plain AMQP the commands and replies go through ``LoopLane`` on the event loop itself (no thread hops;
see ``looplane.py``). Otherwise (Redis, ``memory://``, TLS) through the ``Client``: it has one reply queue and
one consumer thread for every request in flight; here a request is an event-loop future awaited with its
deadline, which that thread resolves in batches (``_arrive``). ``Client.submit`` returns at once (the
publisher's own thread publishes and waits for the confirm; a command waits there while the broker is away),
so it is called right on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from concurrent.futures import Future
from functools import partial

from kvmworker.bridge.looplane import LaneCall, LoopLane
from kvmworker.client import Client, PendingCall, new_msg_id, no_reply_detail, unknown_outcome
from kvmworker.protocol.envelope import Envelope, Reply

log = logging.getLogger("kvmworker.bridge")


class Forwarder:
    def __init__(self, client: Client | None, default_timeout: float, lane: LoopLane | None = None):
        """``client`` forwards when there is no ``lane`` (one of the two is given)."""
        self._client = client
        self._lane = lane
        self.default_timeout = default_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False  # the server is stopping: nothing waits for a reply any more
        self._waiting: set[asyncio.Future] = set()  # one per request awaiting its reply
        # replies that came in on the client's consumer thread, handed to the event loop in batches: one
        # call_soon_threadsafe (one wake-up of the loop) for as many replies as arrive before the loop runs it
        self._arrived: deque[asyncio.Future] = deque()
        self._handing_over = False

    def drain(self) -> None:
        """The server is stopping (SIGTERM): every request still waiting is answered -1 now, while its caller
        can still read it, instead of being cut off with an HTTP 500 when the grace period ends. Thread-safe."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain_now)

    async def forward(self, host: str, envelope: Envelope, principal: str | None = None) -> Reply:
        """The worker's reply, or ``-1`` with ``data.msg_id`` once the request's deadline has passed.

        ``principal`` (the authenticated caller) replaces whatever the body said, so that the journal
        and the worker's log lines name who asked; it travels in the body, covered by the signature.
        """
        timeout = envelope.timeout or self.default_timeout
        # the msg_id is fixed here so that even a publish stuck past the deadline can be asked about later
        update = {"token": None, "timeout": timeout, "principal": principal}
        if envelope.msg_id is None:
            update["msg_id"] = new_msg_id()
        envelope = envelope.model_copy(update=update)
        if principal is not None and log.isEnabledFor(logging.INFO):
            name = f"{envelope.handler}.{envelope.command}"
            log.info("[%s] %s for host %s by %s", envelope.msg_id, name, host, principal)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._draining, self._handing_over = loop, False, False
            self._arrived.clear()
        if self._lane is not None:
            pending = self._lane.submit(host, envelope, timeout)
            reply = await self._await_lane(pending, timeout)
        else:
            pending = self._client.submit(host, envelope, timeout=timeout)
            reply = await self._await_reply(pending, timeout)
        if reply is not None:
            return reply
        detail = no_reply_detail(pending, timeout, host)
        if self._draining:
            detail = "the bridge is stopping and could not wait for the reply; the command may still run"
        return timed_out(host, envelope, detail)

    async def _await_lane(self, call: LaneCall, remaining: float) -> Reply | None:
        """The lane's reply, or None once ``remaining`` seconds have passed without one (or the bridge drains)."""
        future = call.future
        if not future.done() and not self._draining:
            deadline = self._loop.call_later(max(remaining, 0), _wake, future)
            self._waiting.add(future)
            try:
                await future
            finally:
                deadline.cancel()
                self._waiting.discard(future)
        reply = future.result() if future.done() else None
        if reply is None:
            self._lane.forget(call)
        return reply

    async def _await_reply(self, pending: PendingCall, remaining: float) -> Reply | None:
        """The worker's reply, or None once ``remaining`` seconds have passed without one (or the bridge drains).

        The client's future is never cancelled (its consumer thread may be resolving it at this very moment):
        a plain event-loop future stands for it, woken by the reply, the deadline or the drain.
        """
        if not pending.future.done() and not self._draining:
            loop = self._loop
            waiter = loop.create_future()
            deadline = loop.call_later(max(remaining, 0), _wake, waiter)
            self._waiting.add(waiter)
            pending.future.add_done_callback(partial(self._arrive, waiter))
            try:
                await waiter
            finally:
                deadline.cancel()
                self._waiting.discard(waiter)
        if pending.future.done():
            return pending.future.result()
        self._client.forget(pending.correlation_id)
        return None

    def _arrive(self, waiter: asyncio.Future, _done: Future) -> None:
        """On the client's consumer thread: the reply is in; the loop learns it with the others of the batch."""
        self._arrived.append(waiter)
        if not self._handing_over:
            self._handing_over = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        self._handing_over = False  # before taking the batch: a reply appended after this schedules the next one
        while self._arrived:
            _wake(self._arrived.popleft())

    def _drain_now(self) -> None:
        self._draining = True
        for waiter in list(self._waiting):
            _wake(waiter)

    def close(self) -> None:
        """The bridge is closing: a request still waiting (there should be none by now) is answered -1."""
        with contextlib.suppress(RuntimeError):  # its event loop is already closed: nothing waits any more
            self.drain()
        if self._lane is not None:
            self._lane.close()


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def timed_out(host: str, envelope: Envelope, detail: str) -> Reply:
    """-1 to the caller, and a warning for the operator: the one outcome the worker's own log cannot show."""
    msg_id = str(envelope.msg_id)
    fields = {"msg_id": msg_id, "host": host, "handler": envelope.handler, "command": envelope.command}
    fields |= {"code": -1, "detail": detail}
    name = f"{envelope.handler}.{envelope.command}"
    log.warning("[%s] %s for host %s → -1: %s", msg_id, name, host, detail, extra=fields)
    return unknown_outcome(msg_id, detail)
