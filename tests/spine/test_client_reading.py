"""Who reads a client's replies (kvmworker/client.py ``_Turns``): a caller waiting alone reads the reply
connection itself; callers that join it, the bridge's ``submit`` and whatever arrives between calls are read by
the consumer thread. Whoever reads, each caller gets its own reply, over every broker."""

from __future__ import annotations

import threading

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code


def test_calls_one_after_another_mixed_with_bursts_of_concurrent_callers_each_get_their_own_reply(
    running_worker, client, host
):
    replies: dict[str, str] = {}
    failures: list[str] = []

    def call(tag: str) -> None:
        reply = client.call(host, "ProbeHandler", "echo", {"text": tag}, timeout=15)
        if reply.code != Code.OK:
            failures.append(f"{tag}: {reply.code} {reply.data}")
            return
        replies[tag] = reply.data["text"]

    expected = []
    for burst in range(6):
        for i in range(10):  # alone: the caller reads its own reply
            expected.append(tag := f"alone-{burst}-{i}")
            call(tag)
        tags = [f"burst-{burst}-{i}" for i in range(8)]  # together: the consumer thread reads (and a leader)
        expected += tags
        threads = [threading.Thread(target=call, args=(tag,)) for tag in tags]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert replies == {tag: tag for tag in expected}


def test_a_caller_waiting_alone_reads_its_reply_on_its_own_thread(running_worker, host, broker_url, monkeypatch):
    if broker_url.startswith("memory"):
        pytest.skip("memory:// has kombu's consumer only: its consumer thread reads every reply")
    readers: list[str] = []
    on_reply = Client._on_reply

    def noting_the_reader(self, message) -> None:
        readers.append(threading.current_thread().name)
        on_reply(self, message)

    monkeypatch.setattr(Client, "_on_reply", noting_the_reader)
    with Client(broker_url) as client:
        assert client.call(host, "SystemHandler", "ping", timeout=15).code == Code.OK  # the consumer is up
        readers.clear()
        for _ in range(20):
            assert client.call(host, "SystemHandler", "ping", timeout=15).code == Code.OK
    me = threading.current_thread().name
    # the consumer thread may read one now and then (it looks once per 0.2 s, and a reply may be in then)
    assert len(readers) == 20 and readers.count(me) >= 10, readers
