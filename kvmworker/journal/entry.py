"""What the journal holds about one msg_id (``Entry``) and what the worker hands it per arrival (``Received``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)  # one per recorded message: made fast
class Received:
    """One arrival of a message, already redacted, as the middleware hands it to the store."""

    msg_id: str
    received_at: float
    host: str
    handler: str | None
    command: str | None
    dry_run: bool
    redelivered: bool
    envelope: Any
    properties: dict[str, Any] | str
    """A dict, or its JSON text already redacted (``store.JsonText``); ``envelope`` likewise."""
    delivery: dict[str, Any]
    expires_at: float | None = None
    """The expiry of a signature the worker verified: until then the msg_id must stay in the journal."""


@dataclass
class Entry:
    msg_id: str
    received_at: float
    host: str | None
    handler: str | None
    command: str | None
    dry_run: bool
    state: str
    code: int | None
    duration_ms: float | None
    answered_at: float | None
    redelivered: bool
    envelope: Any
    properties: dict[str, Any] | None
    reply: dict[str, Any] | None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    delivery_count: int = 1
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Entry:
        known = {k: value.get(k) for k in cls.__dataclass_fields__}
        known["deliveries"] = known["deliveries"] or []
        known["delivery_count"] = known["delivery_count"] or 1
        return cls(**known)
