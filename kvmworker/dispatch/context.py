"""What a command may know about the message that asked for it (never the raw message)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    msg_id: str
    dry_run: bool = False
    host: str = ""
    deadline: float | None = None
    """Seconds since the epoch by which the caller stops waiting (its envelope's ``timeout``), if it said."""
