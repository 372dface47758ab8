"""Who gets the worker's events hub is said by the composition root, not found by looking at handlers; and the
Assembly that owns the running events closes them: ``offline``, flushed, once the worker has stopped."""

from __future__ import annotations

import json
import uuid

from kvmworker.dispatch.delivery import Delivery
from kvmworker.events import Event, EventBuffer
from kvmworker.events.buffer import FILE_NAME
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.events.handlers import EventProbeHandler


class UnnamedProbeHandler(EventProbeHandler):
    name = "UnnamedProbeHandler"


def status_of(running) -> dict:
    body = json.dumps({"handler": "SystemHandler", "command": "status", "data": {}}).encode()
    reply = running.pipeline.handle(Delivery(body=body, content_type="application/json"))
    assert reply.code == 0, reply
    return reply.data


def test_only_the_event_users_the_assembly_names_are_given_the_hub_and_close_says_offline(tmp_path):
    host = f"kvt-wire-{uuid.uuid4().hex[:8]}"
    settings = Settings(host=host, broker="memory://", state_dir=tmp_path / "state", workers=2)
    named, unnamed = EventProbeHandler(), UnnamedProbeHandler()
    running = start_worker(settings, extra_handlers=[named, unnamed], event_users=[named])
    try:
        assert running.worker.connected.wait(30), "worker did not connect to the broker"
        assert named.events is not None, "a named event user was not given the hub"
        assert unnamed.events is None, "a handler nobody named was given the hub (found by looking at it)"
        assert running.assembly.event_users == (running.assembly.vm, named)  # the production source always
        assert status_of(running)["events"]["seq"] >= 1  # online was said, and status shows the events
    finally:
        running.stop(10)
    left = EventBuffer(settings.state_dir / FILE_NAME)
    try:
        told = [Event.from_body(body) for body in left.recent(10)]
        assert [e.state for e in told if e.source == "worker"][-1] == "offline"
        assert left.pending_count() == 0, "what was buffered went out before stop() returned"
    finally:
        left.close()
