"""Envelope → the host's worker → reply, without ever blocking the event loop on the broker.

The client has one reply queue and one consumer thread for every request in flight; here a request
is a future awaited with its deadline. ``Client.submit`` returns at once (the publisher's own thread
publishes and waits for the confirm; a command waits there while the broker is away), so it is called
right on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kvmworker.client import Client, PendingCall, no_reply_detail, unknown_outcome
from kvmworker.protocol.envelope import Envelope, Reply

log = logging.getLogger("kvmworker.bridge")


class Forwarder:
    def __init__(self, client: Client, default_timeout: float):
        self._client = client
        self.default_timeout = default_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Future | None = None  # done once the server is stopping

    def drain(self) -> None:
        """The server is stopping (SIGTERM): every request still waiting is answered -1 now, while its caller
        can still read it, instead of being cut off with an HTTP 500 when the grace period ends. Thread-safe."""
        if self._loop is not None and self._drained is not None:
            self._loop.call_soon_threadsafe(lambda: self._drained.done() or self._drained.set_result(None))

    async def forward(self, host: str, envelope: Envelope, principal: str | None = None) -> Reply:
        """The worker's reply, or ``-1`` with ``data.msg_id`` once the request's deadline has passed.

        ``principal`` (the authenticated caller) replaces whatever the body said, so that the journal
        and the worker's log lines name who asked; it travels in the body, covered by the signature.
        """
        timeout = envelope.timeout or self.default_timeout
        # the msg_id is fixed here so that even a publish stuck past the deadline can be asked about later
        update = {"token": None, "timeout": timeout, "principal": principal}
        envelope = envelope.model_copy(update=update).ensure_msg_id()
        if principal is not None:
            name = f"{envelope.handler}.{envelope.command}"
            log.info("[%s] %s for host %s by %s", envelope.msg_id, name, host, principal)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._drained = loop, loop.create_future()
        pending = self._client.submit(host, envelope, timeout=timeout)
        reply = await self._await_reply(pending, timeout)
        if reply is not None:
            return reply
        detail = no_reply_detail(pending, timeout, host)
        if self._drained.done():
            detail = "the bridge is stopping and could not wait for the reply; the command may still run"
        return timed_out(host, envelope, detail)

    async def _await_reply(self, pending: PendingCall, remaining: float) -> Reply | None:
        """The worker's reply, or None once ``remaining`` seconds have passed without one."""
        # asyncio.wait, not wait_for: a timeout must not cancel the client's future, which its
        # consumer thread may be resolving at this very moment
        waiter = asyncio.wrap_future(pending.future)
        await asyncio.wait({waiter, self._drained}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            return waiter.result()
        self._client.forget(pending.correlation_id)
        return None

    def close(self) -> None:
        """The bridge is closing: a request still waiting (there should be none by now) is answered -1."""
        with contextlib.suppress(RuntimeError):  # its event loop is already closed: nothing waits any more
            self.drain()


def timed_out(host: str, envelope: Envelope, detail: str) -> Reply:
    """-1 to the caller, and a warning for the operator: the one outcome the worker's own log cannot show."""
    msg_id = str(envelope.msg_id)
    fields = {"msg_id": msg_id, "host": host, "handler": envelope.handler, "command": envelope.command}
    fields |= {"code": -1, "detail": detail}
    name = f"{envelope.handler}.{envelope.command}"
    log.warning("[%s] %s for host %s → -1: %s", msg_id, name, host, detail, extra=fields)
    return unknown_outcome(msg_id, detail)
