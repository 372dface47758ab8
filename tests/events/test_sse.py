"""§7 at the HTTP bridge: ``GET /events`` as Server-Sent Events to a real HTTP client, on every broker, behind
the bridge's authentication and the users' host grants."""

from __future__ import annotations

import json
import uuid

import httpx
import jsonschema
from argon2 import PasswordHasher
from kombu import Connection, Producer

from kvmworker.bridge.auth import Authenticator
from kvmworker.bridge.throttle import Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import UsersFile
from kvmworker.events.sender import events_exchange
from kvmworker.settings import Settings
from tests.bridge.conftest import serving
from tests.conftest import AMQP_URL, require_broker, unique
from tests.events.handlers import SOURCE, EmitData
from tests.events.sse import SseReader
from tests.support.cli import ROOT
from tests.support.processes import wait_for

EVENT_SCHEMA = json.loads((ROOT / "schemas" / "event.json").read_text())


def _bridge_settings(worker) -> Settings:
    return worker.settings.model_copy(update={"default_host": worker.host, "timeout": 10.0})


def test_events_stream_through_the_bridge_as_server_sent_events(broker_url, start_event_worker):
    host = unique("kvt-sse-")
    worker = start_event_worker(broker_url, host)
    with serving(_bridge_settings(worker), registry=worker.running.pipeline.registry) as bridge:
        headers = {"Authorization": f"Bearer {bridge.token}"}
        reader = SseReader(bridge.url, headers, {"host": host}).start()
        assert reader.status == 200 and reader.content_type.startswith("text/event-stream")
        assert "connected" in reader.comments
        msg_id = str(uuid.uuid4())
        reply = bridge.call("EventProbeHandler", "emit", {"count": 20, "subject": "kvt-sse"}, msg_id=msg_id)
        assert reply["code"] == 0, reply

        events = reader.wait_events(20)
        assert len(events) == 20, f"{len(events)} of 20"
        validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
        for event in events:
            validator.validate(event)
        assert [e["seq"] for e in events] == reply["data"]["seqs"]
        assert [m.id for m in reader.messages] == [f"{host}:{seq}" for seq in reply["data"]["seqs"]]
        assert {e["msg_id"] for e in events} == {msg_id}
        assert all(e["source"] == SOURCE and e["subject"] == "kvt-sse" for e in events)

        metrics = bridge.http.get(bridge.url + "/metrics").text
        assert "kvmworker_bridge_event_streams 1.0" in metrics
        assert "kvmworker_bridge_events_sent_total 20.0" in metrics
    assert reader.ended.wait(15), "the stream did not end when the bridge stopped"


def test_the_event_stream_filters_by_source(start_event_worker):
    host = unique("kvt-sse-")
    worker = start_event_worker("memory://", host, resync_interval=0.2)
    with serving(_bridge_settings(worker), registry=worker.running.pipeline.registry) as bridge:
        headers = {"Authorization": f"Bearer {bridge.token}"}
        only_probe = SseReader(bridge.url, headers, {"host": host, "source": SOURCE}).start()
        only_worker = SseReader(bridge.url, headers, {"host": host, "source": "worker"}).start()
        assert bridge.call("EventProbeHandler", "emit", {"count": 3})["code"] == 0
        assert len(only_probe.wait_events(3)) == 3
        assert len(only_worker.wait_events(2)) >= 2
    assert {e["source"] for e in only_probe.events()} == {SOURCE}
    assert {(e["source"], e["state"]) for e in only_worker.events()} == {("worker", "sync")}


def test_the_event_stream_is_behind_the_bridges_authentication(start_event_worker):
    worker = start_event_worker("memory://", unique("kvt-sse-"))
    with serving(_bridge_settings(worker), registry=worker.running.pipeline.registry) as bridge:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            response = httpx.get(bridge.url + "/events", headers=headers, timeout=10)
            assert response.status_code == 401
            assert response.json()["code"] == 20004
        bad = httpx.get(bridge.url + "/events", params={"source": "No.Dots"}, timeout=10, headers=bridge.http.headers)
        assert (bad.status_code, bad.json()["code"], bad.json()["data"]["field"]) == (400, 20001, "source")


def test_a_user_sees_the_events_of_the_hosts_their_grants_reach_and_no_others(tmp_path, start_event_worker):
    mine, theirs = unique("kvt-sse-mine-"), unique("kvt-sse-other-")
    worker = start_event_worker("memory://", mine)
    other = start_event_worker("memory://", theirs)
    users = UsersFile(tmp_path / "users", PasswordHasher(time_cost=1, memory_cost=16384, parallelism=1))
    users.add("carol", "a long password", hosts=["kvt-sse-mine-*"], commands=["*"])
    auth = Authenticator(users, TokenStore(ttl=60), Throttle(free_failures=1000))
    with serving(_bridge_settings(worker), auth, worker.running.pipeline.registry) as bridge:
        login = {"username": "carol", "password": "a long password"}
        token = bridge.post({"handler": "UserHandler", "command": "login", "data": login}).json()["data"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        refused = httpx.get(bridge.url + "/events", params={"host": theirs}, headers=headers, timeout=10)
        assert (refused.status_code, refused.json()["code"]) == (403, 20004)

        everything = SseReader(bridge.url, headers).start()
        other.probe.emit_now(EmitData(subject="kvt-theirs"))  # their host changes first…
        assert wait_for(lambda: other.probe.events.emitter.buffer.pending_count() == 0, 10)
        reply = bridge.post({"handler": "EventProbeHandler", "command": "emit", "data": {}}, headers=headers)
        assert reply.json()["code"] == 0  # …then carol's, through the bridge
        assert len(everything.wait_events(1)) == 1
    assert {e["host"] for e in everything.events()} == {mine}


def test_a_skipped_seq_is_an_event_gap_message_before_the_event_that_shows_it(start_event_worker):
    url = require_broker("amqp", AMQP_URL)
    worker = start_event_worker(url, unique("kvt-sse-"))
    foreign = unique("kvt-sse-foreign-")
    with serving(_bridge_settings(worker), registry=worker.running.pipeline.registry) as bridge:
        reader = SseReader(bridge.url, {"Authorization": f"Bearer {bridge.token}"}, {"host": foreign}).start()
        with Connection(url) as conn:
            producer = Producer(conn.channel())
            for seq in (1, 2, 5, 5, 6):  # 3 and 4 never sent; 5 sent twice (as after a crash)
                body = {
                    "host": foreign,
                    "seq": seq,
                    "time": 1.0,
                    "source": "link",
                    "kind": "state",
                    "subject": "kvt0",
                    "state": "up",
                    "data": {},
                }
                producer.publish(
                    body, exchange=events_exchange(), routing_key=f"{foreign}.link.state", serializer="json"
                )
        assert wait_for(lambda: len(reader.events()) == 4, 30), reader.messages
    assert [e["seq"] for e in reader.events()] == [1, 2, 5, 6]
    gaps = [m.json() for m in reader.messages if m.event == "gap"]
    assert gaps == [{"gap": True, "host": foreign, "first": 3, "last": 4, "reset": False}]
    order = [m.event for m in reader.messages]
    assert order == ["message", "message", "gap", "message", "message"]
