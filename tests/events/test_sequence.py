"""§7 on every broker: events arrive in order, numbered from 1 without gaps; the caused ones carry their msg_id;
the worker's own state (online, degraded, sync, offline) with the whole picture."""

from __future__ import annotations

import time
import uuid

import pytest

from kvmworker.client import Client
from kvmworker.events.model import Event
from tests.conftest import unique
from tests.events.conftest import contiguous, seqs
from tests.events.handlers import SOURCE


@pytest.fixture
def follower_client(broker_url: str):
    with Client(broker_url) as client:
        yield client


def test_events_arrive_in_order_numbered_from_one_without_gaps(broker_url, start_event_worker, follow, follower_client):
    host = unique("kvt-ev-")
    follower = follow(follower_client, host=host)
    worker = start_event_worker(broker_url, host)
    reply = follower_client.call(host, "EventProbeHandler", "emit", {"count": 300, "subject": "kvt-a"}, timeout=60)
    assert reply.code == 0, reply

    assert follower.wait_for(lambda f: len(f.of()) == 300), f"{len(follower.of())} of 300 arrived"
    events = follower.events
    assert events[0].source == "worker" and events[0].state == "online" and events[0].seq == 1
    assert seqs(events) == list(range(1, len(events) + 1)), "out of order, repeated or skipped"
    assert follower.gaps == []
    ticks = follower.of()
    assert [e.data["i"] for e in ticks] == list(range(300))
    assert seqs(ticks) == reply.data["seqs"]
    assert all(e.host == host and e.subject == "kvt-a" and e.routing_key == f"{host}.{SOURCE}.tick" for e in ticks)
    worker.stop()


def test_an_event_caused_by_a_command_carries_its_msg_id_and_later_ones_do_not(
    broker_url, start_event_worker, follow, follower_client
):
    host = unique("kvt-ev-")
    follower = follow(follower_client, host=host, source=SOURCE)
    worker = start_event_worker(broker_url, host)
    worker.probe.events.causes.window = 0.5
    msg_id = str(uuid.uuid4())
    reply = follower_client.call(host, "EventProbeHandler", "emit", {"subject": "kvt-b"}, timeout=30, msg_id=msg_id)
    assert reply.code == 0, reply
    assert follower.wait_for(lambda f: len(f.of()) == 1)
    assert follower.of()[0].msg_id == msg_id

    # the same subject changing later, with no command acting on it: nobody's msg_id
    time.sleep(0.7)
    worker.probe.emit_now(_emit_data("kvt-b"))
    assert follower.wait_for(lambda f: len(f.of()) == 2)
    assert follower.of()[1].msg_id is None
    assert follower.events[0].source == SOURCE, "the source filter let other events through"


def _emit_data(subject: str):
    from tests.events.handlers import EmitData

    return EmitData(subject=subject)


def test_degraded_and_regained_components_and_requested_syncs_carry_the_picture(
    broker_url, start_event_worker, follow, follower_client
):
    host = unique("kvt-ev-")
    follower = follow(follower_client, host=host, source="worker")
    start_event_worker(broker_url, host)
    call = follower_client.call
    assert call(host, "EventProbeHandler", "degrade", {"reason": "connection lost"}, timeout=30).code == 0
    assert call(host, "EventProbeHandler", "recover", {}, timeout=30).code == 0
    assert call(host, "EventProbeHandler", "sync", {"reason": "libvirt reconnected"}, timeout=30).code == 0
    assert follower.wait_for(lambda f: len(f.events) == 4)
    online, degraded, regained, sync = follower.events
    assert (online.state, online.data["vms"]) == ("online", {"kvt-vm": "running"})
    assert (degraded.state, degraded.previous, degraded.reason) == ("degraded", "online", "libvirt: connection lost")
    assert degraded.data == {"degraded": {"libvirt": "connection lost"}}
    assert (regained.state, regained.previous, regained.reason) == ("online", "degraded", "libvirt: regained")
    assert regained.data["vms"] == {"kvt-vm": "running"} and regained.data["degraded"] == {}
    assert (sync.state, sync.reason) == ("sync", "libvirt reconnected")
    assert sync.data["vms"] == {"kvt-vm": "running"} and sync.data["dropped"] == 0
    assert contiguous(seqs(follower.events))


def test_the_worker_says_sync_every_resync_interval_and_offline_when_it_stops(
    broker_url, start_event_worker, follow, follower_client
):
    host = unique("kvt-ev-")
    follower = follow(follower_client, host=host, source="worker")
    worker = start_event_worker(broker_url, host, resync_interval=0.3)
    assert follower.wait_for(lambda f: len([e for e in f.events if e.state == "sync"]) >= 3)
    worker.stop()
    assert follower.wait_for(lambda f: f.events[-1].state == "offline", timeout=15)
    states = [e.state for e in follower.events]
    assert states[0] == "online" and states[-1] == "offline"
    assert set(states[1:-1]) == {"sync"}
    assert all(e.reason == "interval" and "vms" in e.data for e in follower.events if e.state == "sync")
    assert contiguous(seqs(follower.events)) and follower.gaps == []


def test_event_bodies_are_what_the_model_reads_back(broker_url, start_event_worker, follow, follower_client):
    host = unique("kvt-ev-")
    follower = follow(follower_client, host=host)
    start_event_worker(broker_url, host)
    assert follower.wait_for(lambda f: len(f.events) >= 1)
    online = follower.events[0]
    assert Event.from_body(online.to_body()) == online
    assert b'"previous"' not in online.to_body(), "a None optional must be left out of the body"
