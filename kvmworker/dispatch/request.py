"""A received message as the dispatcher sees it: no kombu, no HTTP, just bytes and metadata."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kvmworker.protocol.envelope import Envelope


@dataclass
class Request:
    body: bytes
    content_type: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    redelivered: bool = False
    received_at: float = field(default_factory=time.time)
    envelope: Envelope | None = None
    msg_id: str = ""
    """The idempotency key: the envelope's msg_id, else the transport's message_id, else a fresh one."""
    inline: bool = False
    """Set once routed: it runs on the consumer thread, so nothing may make it wait (see ``command``)."""
    read_only: bool = False
    """Set once routed: the command changes nothing (``mutates=False``)."""
    safe_to_rerun: bool = False
    """Set once routed: the command may run again after a crash cut it short (see ``command``)."""
    verified_until: float | None = None
    """Set by the trust guard when the signature verified: its expiry. The journal keeps the msg_id until then."""

    def assign_msg_id(self) -> None:
        if self.envelope is not None and self.envelope.msg_id is not None:
            self.msg_id = str(self.envelope.msg_id)
        elif self.message_id and _is_uuid(self.message_id):
            self.msg_id = self.message_id
        elif not self.msg_id:
            self.msg_id = str(uuid.uuid4())


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


@dataclass(frozen=True)
class Context:
    """What a command may know about the message that asked for it."""

    msg_id: str
    dry_run: bool = False
    host: str = ""
    deadline: float | None = None
    request: Request | None = None
