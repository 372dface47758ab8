"""One message between its delivery and its settling, and what the pipeline has learned about it."""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from kvmworker.dispatch.commands import BoundCommand
from kvmworker.dispatch.delivery import Delivery
from kvmworker.protocol.envelope import Envelope

if TYPE_CHECKING:
    from kvmworker.dispatch.middleware import Middleware
    from kvmworker.dispatch.operations import Operation

S = TypeVar("S")


class InFlight:
    """Owned by the pipeline, which alone sets its fields, each in one named step of ``Pipeline``.

    Middleware read them; what a middleware decides it returns (see ``dispatch/middleware.py``), and what it
    keeps about this message between its hooks lives in its own slot, ``state_of(middleware)``.
    """

    __slots__ = ("_states", "command", "data", "delivery", "envelope", "msg_id", "operation", "reply_body",
                 "reply_to", "resource", "started", "verified_until")  # fmt: skip

    def __init__(self, delivery: Delivery, states: dict[Middleware[Any], Any]):
        self.delivery = delivery
        self.started = time.perf_counter()
        # The idempotency key: the envelope's msg_id once parsed, else the transport's message_id, else fresh.
        self.msg_id = _transport_msg_id(delivery.message_id) or str(uuid.uuid4())
        # None when there is nobody to answer, or when a guard does not trust the sender's reply_to.
        self.reply_to = delivery.reply_to
        # When the signature was verified: its expiry. The journal keeps the msg_id until then.
        self.verified_until: float | None = None
        self.envelope: Envelope | None = None
        # Set once routed and its data valid: the command runs unless a middleware answers first.
        self.command: BoundCommand | None = None
        self.data: BaseModel | None = None
        self.resource: str | None = None
        # Set once handed to the pool (or run by ``handle``): its entry in the worker's operations (§8).
        self.operation: Operation | None = None
        # Set once the reply is final, before the after_reply hooks: its JSON as published (the journal records
        # this text rather than encoding the reply again).
        self.reply_body: bytes | None = None
        self._states = states

    @property
    def inline(self) -> bool:
        """It runs on the consumer thread, so nothing may make it wait (see ``command``)."""
        return self.command is not None and self.command.spec.inline

    @property
    def read_only(self) -> bool:
        return self.command is not None and not self.command.spec.mutates

    @property
    def safe_to_rerun(self) -> bool:
        """It may run again after a crash cut it short (see ``command``)."""
        return self.command is not None and self.command.spec.safe_to_rerun

    def state_of(self, owner: Middleware[S]) -> S:
        """The slot of ``owner`` for this message, made by its ``new_state``."""
        return self._states[owner]

    @property
    def label(self) -> str:
        """``[msg_id Handler.command] ``: how log lines about this message begin."""
        env = self.envelope
        return f"[{self.msg_id} {f'{env.handler}.{env.command}' if env else '?'}] "


# The canonical spelling, which every client sends: accepted without building a UUID (uuid.UUID accepts it too).
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _transport_msg_id(message_id: str | None) -> str | None:
    if not message_id:
        return None
    if type(message_id) is str and _CANONICAL_UUID.fullmatch(message_id):
        return message_id
    try:
        uuid.UUID(message_id)
    except (ValueError, TypeError, AttributeError):
        return None
    return message_id
