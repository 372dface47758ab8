"""The event on the wire (§7): what changed on a host, numbered per host, published to a topic exchange.

``Event`` is exactly the body a consumer receives. It is frozen: a source describes a change once, the
emitter numbers it, and nobody edits it afterwards. Optional fields that are ``None`` are left out of the
body (``to_body``), so the wire carries ``previous``/``reason``/``msg_id`` only when they say something.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EXCHANGE = "kvmworker.events"
"""Durable topic exchange; routing key ``<host>.<source>.<kind>``."""
CONTENT_TYPE = "application/json"

WORD = r"^[a-z][a-z_]{0,31}$"
"""A source or a kind: one lower-case word (it is one element of the routing key, so never a dot)."""

# The sources and kinds of §7. Sources may publish others (a consumer binds by pattern), these are the known ones.
VM_LIFECYCLE = ("vm", "lifecycle")
NETWORK_STATE = ("network", "state")
LINK_STATE = ("link", "state")
OPERATION_PROGRESS = ("operation", "progress")
OPERATION_DONE = ("operation", "done")
WORKER_STATE = ("worker", "state")


class Event(BaseModel):
    """One change on one host. ``seq`` is per host, from 1, one more per event, never reused (restarts too)."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="Event")

    host: str = Field(min_length=1, description="the worker's host name (the first part of the routing key)")
    seq: int = Field(ge=1, description="per host, from 1, +1 per event, never reused: a skipped number is a gap")
    time: float = Field(ge=0, description="epoch seconds when the worker saw the change")
    source: str = Field(pattern=WORD, description="vm, network, link, operation, worker")
    kind: str = Field(pattern=WORD, description="lifecycle, state, progress, done")
    subject: str = Field(description="the VM name, network_id, device name or msg_id the event is about")
    state: str = Field(description="the new state: started, stopped, degraded, up, online, sync, …")
    previous: str | None = Field(default=None, description="the state before, where known")
    reason: str | None = Field(default=None, description="why: libvirt's detail, what drifted, …")
    msg_id: str | None = Field(default=None, description="the command that caused the change, when one did")
    data: dict[str, Any] = Field(default_factory=dict, description="more about it; online/sync: the whole picture")

    @property
    def routing_key(self) -> str:
        return routing_key(self.host, self.source, self.kind)

    def to_body(self) -> bytes:
        """The JSON body published: ``None`` optionals left out, UTF-8, compact."""
        body = {k: v for k, v in self.model_dump(mode="json").items() if v is not None or k == "data"}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes | str | dict) -> Event:
        if isinstance(body, dict):
            return cls.model_validate(body)
        return cls.model_validate_json(body)


def routing_key(host: str, source: str, kind: str) -> str:
    return f"{host}.{source}.{kind}"


def binding_key(host: str | None = None, source: str | None = None) -> str:
    """The topic pattern of the events of ``host`` (any: ``#``, which also matches host names with dots)
    from ``source`` (any: ``*``)."""
    return f"{host or '#'}.{source or '*'}.*"
