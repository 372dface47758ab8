"""A test-only event source: commands that make the worker emit events, as the real sources (libvirt,
netlink) do, so that the sequence, the buffer and every consumer can be exercised without a VM or a network."""

from __future__ import annotations

import threading
import time

from pydantic import BaseModel, Field

from kvmworker.dispatch.commands import command
from kvmworker.dispatch.request import Context
from kvmworker.events import Events

SOURCE, KIND = "probe", "tick"


class EmitData(BaseModel):
    count: int = Field(default=1, ge=1, le=100_000)
    subject: str = Field(default="kvt-subject", max_length=100)
    interval: float = Field(default=0, ge=0, le=5)
    background: bool = False  # return at once; a thread emits (changes that go on while the broker is away)


class SyncData(BaseModel):
    reason: str = "requested by a test"


class ComponentData(BaseModel):
    component: str = "libvirt"
    reason: str = "connection lost"


class EventProbeHandler:
    """``emit`` notes itself as the cause of changes to ``subject`` (as VmHandler does for a VM), then emits
    ``count`` ``probe.tick`` events whose ``msg_id`` comes from ``Causes``, like a real source's."""

    name = "EventProbeHandler"

    def __init__(self, picture: dict | None = None) -> None:
        self.events: Events | None = None
        self._picture = picture if picture is not None else {"kvt-vm": "running"}
        self.background: list[threading.Thread] = []

    def use_events(self, events: Events) -> None:
        self.events = events
        events.pictures.provide("vms", lambda: dict(self._picture))

    @command(EmitData, resource=lambda d: d.subject)
    def emit(self, data: EmitData, ctx: Context) -> dict:
        assert self.events is not None, "the worker gave this handler no events"
        self.events.causes.note(data.subject, ctx.msg_id)
        if data.background:
            thread = threading.Thread(target=self.emit_now, args=(data,), daemon=True)
            self.background.append(thread)
            thread.start()
            return {"emitting": data.count}
        return {"seqs": self.emit_now(data)}

    def emit_now(self, data: EmitData) -> list[int]:
        seqs = []
        for i in range(data.count):
            cause = self.events.causes.cause(data.subject)
            event = self.events.emitter.emit(SOURCE, KIND, data.subject, "ticked", msg_id=cause, data={"i": i})
            seqs.append(event.seq)
            if data.interval:
                time.sleep(data.interval)
        return seqs

    @command(SyncData, mutates=False)
    def sync(self, data: SyncData, ctx: Context) -> dict:
        self.events.emitter.request_sync(data.reason)
        return {}

    @command(ComponentData)
    def degrade(self, data: ComponentData, ctx: Context) -> dict:
        self.events.emitter.degraded(data.component, data.reason)
        return {}

    @command(ComponentData)
    def recover(self, data: ComponentData, ctx: Context) -> dict:
        self.events.emitter.recovered(data.component)
        return {}
