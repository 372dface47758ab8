"""What arrived, as the pipeline sees it: bytes and metadata, no kombu, no HTTP. Never changed once built."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=lambda: _NO_HEADERS)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    """Where the sender asked the reply to go; the pipeline may decline to send it there (see ``InFlight``)."""
    redelivered: bool = False
    received_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.headers, MappingProxyType):
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
