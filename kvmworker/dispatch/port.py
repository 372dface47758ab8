"""The transport's side of one message: how its reply goes out and how it is settled.

The pipeline settles only from ``done``, so that a message is acked strictly after its reply is published.
A synchronous transport calls ``done`` before ``publish`` returns; an asynchronous one (publisher confirms
matched by delivery tag) calls it later, from its own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Done = Callable[[BaseException | None], None]


@dataclass(frozen=True, slots=True)
class Outgoing:
    body: bytes
    routing_key: str
    """The request's reply_to."""
    correlation_id: str
    message_id: str
    headers: Mapping[str, Any]


class Port(Protocol):
    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """Send ``outgoing``; call ``done(None)`` once it is out, ``done(exc)`` if it cannot be."""

    def settle(self, ack: bool) -> None:
        """Ack the message (True) or give it back to the queue (False). Thread-safe."""


@dataclass
class CapturingPort:
    """Keeps what would have been published and how the message was settled (``Pipeline.handle``, tests)."""

    published: list[Outgoing] = field(default_factory=list)
    settled: list[bool] = field(default_factory=list)

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        self.published.append(outgoing)
        done(None)

    def settle(self, ack: bool) -> None:
        self.settled.append(ack)
