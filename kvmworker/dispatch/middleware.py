"""Hooks around every message (metrics, signatures, command logs, the journal). The pipeline calls them.

A hook decides by returning: ``on_receive`` a ``Refusal`` (answer instead of the command) or ``Vouched``
(the signature holds until then); ``before_execute`` a Reply (answer instead of the command, e.g. the stored
reply of a duplicate). A hook that raises is logged loudly and skipped, except in a middleware marked
``guard = True``: a guard that cannot decide refuses (the exception becomes the reply).

What a middleware keeps about one message between its hooks lives in that message's slot: override
``new_state`` and read it back with ``msg.state_of(self)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from kvmworker.dispatch.inflight import InFlight
from kvmworker.protocol.envelope import Reply

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer ``reply`` instead of running the command.

    ``answer_sender=False``: nothing vouches for the message's reply_to, so the reply goes to nobody (the
    message is still logged, journalled and acked).
    """

    reply: Reply
    answer_sender: bool = True


@dataclass(frozen=True, slots=True)
class Vouched:
    """The message's signature verified; it holds until ``until`` (seconds since the epoch)."""

    until: float


class Middleware(Generic[S]):
    guard: ClassVar[bool] = False

    def new_state(self) -> S:
        """This middleware's slot on a new message (a middleware that keeps nothing per message returns None)."""
        return None  # type: ignore[return-value]

    def on_receive(self, msg: InFlight) -> Refusal | Vouched | None:
        """Before the body is decoded; the delivery's bytes and headers only."""
        return None

    def before_execute(self, msg: InFlight) -> Reply | None:
        """Routed and its data valid, on the thread that runs the command, just before it runs."""
        return None

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        """Once the reply is final (it serialises), before it is published."""


def keeps_state(mw: Middleware[Any]) -> bool:
    return type(mw).new_state is not Middleware.new_state
