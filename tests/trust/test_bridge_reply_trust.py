"""The HTTP bridge, forwarding on its event loop's own AMQP connection, believes only replies its host signed."""

from __future__ import annotations

import contextlib
import logging
import threading

import httpx
import pytest
from kombu import Connection, Consumer, Producer

from kvmworker.bridge.app import create_app
from kvmworker.bridge.server import BridgeServer
from kvmworker.client import Client
from kvmworker.settings import Settings
from kvmworker.transport.names import host_queue
from tests.trust.wire import unsigned_answerer

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("real_broker", ["amqp"], indirect=True)
def test_a_forged_reply_to_the_bridge_is_dropped_and_the_caller_is_answered_minus_one(
    real_broker, signer, host, tmp_path, caplog
):
    """A fake worker consumes the host's queue and answers every command unsigned, at once."""
    caplog.set_level(logging.WARNING, logger="kvmworker.bridge")
    forged: list[str] = []
    stop = threading.Event()
    settings = Settings(host=host, default_host=host, broker_url=real_broker, state_dir=tmp_path, insecure_open=True)
    with Connection(real_broker) as conn:
        queue = host_queue(host)
        producer = Producer(conn.channel())
        forge = unsigned_answerer(producer, forged)

        def fake_worker() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)

        with Consumer(conn.channel(), [queue], callbacks=[forge]):
            worker = threading.Thread(target=fake_worker, daemon=True)
            worker.start()
            try:
                with Client(real_broker, signer=signer, declare_host_queues=False) as client:
                    app = create_app(settings, client)
                    server = BridgeServer(app, "127.0.0.1", 0)
                    server.start()
                    try:
                        body = {"handler": "SystemHandler", "command": "ping", "data": {}, "timeout": 2}
                        reply = httpx.post(server.url + "/", json=body, timeout=20).json()
                    finally:
                        server.stop()
                        app.state.bridge.close()
            finally:
                stop.set()
                worker.join(5)
        queue.bind(conn).delete()
    assert len(forged) == 1, "the fake worker never answered: nothing was forged"
    assert reply["code"] == -1, reply
    assert reply["data"]["detail"] == f"no reply from host {host!r} within 2 s"
    assert any("its signature does not verify" in r.getMessage() for r in caplog.records)
