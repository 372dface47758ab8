"""The publisher against the real brokers: ``publish_async`` returns at once, ``done`` tells each message's fate.

With RabbitMQ's confirms the publishing thread matches acks and nacks to messages by delivery tag; the queues
here make the broker answer in every way it can: acks for several messages at once (``multiple``), acks out
of the order the messages were sent (a transient queue confirms at once, a durable one after its disk write),
and nacks (a queue of length 0 that rejects publishes). Messages are read back with plain kombu.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Queue

from kvmworker.transport.connection import open_connection
from kvmworker.transport.publisher import Publisher, PublisherClosed, nacked
from tests.conftest import AMQP_URL, BROKERS, require_broker

pytestmark = pytest.mark.broker


class Outcomes:
    """``done`` callbacks for ``n`` messages: each message's outcome, and the order the outcomes came in."""

    def __init__(self, n: int):
        self.n = n
        self.order: list[int] = []
        self.by_message: dict[int, list[BaseException | None]] = {}
        self.threads: set[str] = set()
        self._all = threading.Event()
        self._lock = threading.Lock()

    def done_for(self, i: int):
        def done(exc: BaseException | None) -> None:
            with self._lock:
                self.order.append(i)
                self.by_message.setdefault(i, []).append(exc)
                self.threads.add(threading.current_thread().name)
                if len(self.order) >= self.n:
                    self._all.set()

        return done

    def wait(self, timeout: float) -> bool:
        return self._all.wait(timeout)


@contextlib.contextmanager
def queues(url: str, *declared: Queue) -> Iterator[None]:
    """Queues of this test only (``kvt-pub-…``: not a prefix other sessions sweep), deleted at the end."""
    try:
        yield
    finally:
        with Connection(url) as conn:
            for queue in declared:
                with contextlib.suppress(*conn.channel_errors):
                    queue.bind(conn.channel()).delete()


def drain(url: str, queue: Queue) -> list[str]:
    """Every message waiting in ``queue`` (its message_id), taken off it."""
    ids = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := queue.bind(channel).get(no_ack=True)) is not None:
            ids.append(message.properties["message_id"])
    return ids


def name(kind: str) -> str:
    return f"kvt-pub-{uuid.uuid4().hex[:8]}-{kind}"


def test_each_confirm_reaches_its_own_message_whether_acked_together_one_by_one_out_of_order_or_nacked():
    url = require_broker("amqp", AMQP_URL)
    durable = Queue(name("durable"), durable=True, auto_delete=False)
    transient = Queue(name("transient"), durable=False, auto_delete=False)
    full = Queue(name("full"), durable=False, queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    targets = [(durable, True), (transient, False), (full, False)]
    n = 1500
    outcomes = Outcomes(n)
    with queues(url, durable, transient, full):
        publisher = Publisher(open_connection(url), nack_retries=0)  # a nack fails the message at once
        try:
            for i in range(n):
                queue, persistent = targets[i % 3]
                publisher.publish_async(
                    b"{}",
                    routing_key=queue.name,
                    persistent=persistent,
                    declare=(queue,) if i < 3 else (),
                    message_id=str(i),
                    done=outcomes.done_for(i),
                )
            assert outcomes.wait(60), f"{n - len(outcomes.order)} messages never heard of"
            counts = publisher.counts
        finally:
            publisher.close()
        assert all(len(results) == 1 for results in outcomes.by_message.values()), "a message was told twice"
        refused = {i for i, (exc,) in outcomes.by_message.items() if exc is not None}
        assert refused == set(range(2, n, 3)), "a message got another's confirm"
        assert all(nacked(outcomes.by_message[i][0]) for i in refused)
        assert sorted(drain(url, durable), key=int) == [str(i) for i in range(0, n, 3)]
        assert sorted(drain(url, transient), key=int) == [str(i) for i in range(1, n, 3)]
    # the broker did answer in each of the ways this test is about
    assert counts.multiple_acks > 0, "no ack confirmed several messages at once"
    assert outcomes.order != sorted(outcomes.order), "every confirm came in the order the messages were sent"
    assert counts.nacked == n // 3 and counts.confirmed == n - n // 3
    assert outcomes.threads == {"kvmworker-publish"}, "done was called from a caller's thread"


def test_a_nacked_message_is_sent_again_after_a_pause_and_fails_once_its_retries_are_spent(caplog):
    url = require_broker("amqp", AMQP_URL)
    full = Queue(name("full"), durable=False, queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    with queues(url, full), caplog.at_level(logging.WARNING, "kvmworker.publisher"):
        publisher = Publisher(open_connection(url), nack_retries=2)
        try:
            with pytest.raises(Exception) as refused:
                publisher.publish(b"{}", routing_key=full.name, declare=(full,), message_id="kvt-nacked")
            counts = publisher.counts
        finally:
            publisher.close()
    assert nacked(refused.value) and "3 times" in str(refused.value)
    assert (counts.sent, counts.nacked, counts.resent, counts.failed) == (3, 3, 2, 1)
    warnings = [r.getMessage() for r in caplog.records if "nacked the publish" in r.getMessage()]
    assert len(warnings) == 2 and all(w.startswith("[kvt-nacked]") for w in warnings), warnings


@pytest.mark.parametrize("broker", ["amqp-without-confirms", "redis", "memory"])
def test_without_confirms_done_follows_the_publish_and_the_message_is_in_the_queue(broker):
    scheme = broker.split("-")[0]
    url = BROKERS[scheme] if scheme == "memory" else require_broker(scheme, BROKERS[scheme])
    queue = Queue(name("plain"), durable=False, auto_delete=False)
    outcomes = Outcomes(20)
    with queues(url, queue):
        publisher = Publisher(open_connection(url, confirms=False))
        try:
            assert not publisher.confirms
            for i in range(20):
                publisher.publish_async(
                    b"{}", routing_key=queue.name, declare=(queue,), message_id=str(i), done=outcomes.done_for(i)
                )
            assert outcomes.wait(20)
            assert outcomes.by_message == {i: [None] for i in range(20)}
            assert sorted(drain(url, queue), key=int) == [str(i) for i in range(20)]
        finally:
            publisher.close()


def test_a_message_handed_to_a_closed_publisher_fails_at_once_instead_of_waiting_forever():
    url = require_broker("amqp", AMQP_URL)
    publisher = Publisher(open_connection(url))
    publisher.close()
    outcomes = Outcomes(1)
    publisher.publish_async(b"{}", routing_key=name("never"), done=outcomes.done_for(0))
    assert outcomes.wait(5)
    assert isinstance(outcomes.by_message[0][0], PublisherClosed)
    with pytest.raises(PublisherClosed):
        publisher.publish(b"{}", routing_key=name("never"))


def test_bursts_from_many_threads_with_declares_among_them_are_each_confirmed_once_and_all_in_their_queues():
    """Publishes between two declares leave in one write, and a declare's wait may read confirms behind its
    answer: every message must still be confirmed exactly once, in its own queue, none lost or doubled."""
    url = require_broker("amqp", AMQP_URL)
    declared = [Queue(name(f"burst{k}"), durable=False, auto_delete=False) for k in range(4)]
    threads, per_thread = 8, 50
    outcomes = Outcomes(threads * per_thread)
    with queues(url, *declared):
        with Connection(url) as conn:
            for queue in declared:
                queue.bind(conn.channel()).declare()
        publisher = Publisher(open_connection(url))
        try:

            def burst(t: int) -> None:
                for j in range(per_thread):
                    i = t * per_thread + j
                    queue = declared[i % len(declared)]
                    publisher.publish_async(
                        b"{}",
                        routing_key=queue.name,
                        declare=(queue,) if j % 10 == 0 else (),  # declared again now and then: a wait among the bursts
                        message_id=str(i),
                        done=outcomes.done_for(i),
                    )

            callers = [threading.Thread(target=burst, args=(t,)) for t in range(threads)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
            assert outcomes.wait(30)
            assert outcomes.by_message == {i: [None] for i in range(threads * per_thread)}
            found = {queue.name: drain(url, queue) for queue in declared}
            for k, queue in enumerate(declared):
                expected = {str(i) for i in range(threads * per_thread) if i % len(declared) == k}
                assert sorted(found[queue.name]) == sorted(expected)
        finally:
            publisher.close()


@pytest.mark.parametrize("broker", ["amqp", "amqp-without-confirms", "redis", "memory"])
def test_a_message_the_caller_writes_inline_reads_in_plain_kombu_as_the_publishing_threads_own(broker):
    """Inline, the caller writes the frames (AMQP) or the LPUSH (Redis) itself: a foreign consumer sees the same
    message, body, headers and properties, as when the publishing thread publishes through kombu."""
    scheme = broker.split("-")[0]
    url = BROKERS[scheme] if scheme == "memory" else require_broker(scheme, BROKERS[scheme])
    queue = Queue(name("inline"), durable=True, auto_delete=False)
    headers = {"x-kvm-host": "kvt-é", "x-kvm-expires-at": 1.5, "n": 7}
    properties = {"correlation_id": "cid-1", "reply_to": "kvt-reply"}
    with queues(url, queue):
        publisher = Publisher(open_connection(url, confirms=not broker.endswith("without-confirms")))
        try:
            for i, inline in enumerate((False, True)):
                publisher.publish(
                    b'{"a":"\xc3\xa9"}',
                    routing_key=queue.name,
                    declare=(queue,) if i == 0 else (),
                    persistent=True,
                    headers=headers,
                    message_id=f"m{i}",
                    inline=inline,
                    **properties,
                )
            counts = publisher.counts
        finally:
            publisher.close()
        with Connection(url) as conn:
            channel = conn.channel()
            seen = [queue.bind(channel).get(no_ack=True) for _ in range(2)]
    assert counts.inline == 1, counts
    assert [m.properties["message_id"] for m in seen] == ["m0", "m1"]
    thread_made, inline_made = seen
    assert inline_made.body == thread_made.body and json.loads(inline_made.body) == {"a": "é"}
    assert inline_made.headers == thread_made.headers == headers
    assert (inline_made.content_type, inline_made.content_encoding) == ("application/json", "utf-8")
    for key in ("correlation_id", "reply_to", "delivery_mode"):
        assert inline_made.properties.get(key) == thread_made.properties.get(key), key


def test_over_redis_messages_queued_behind_one_another_leave_in_one_write_and_read_in_plain_kombu_as_kombus_own():
    """The publishing thread writes what is queued for Redis as LPUSHes in one write (kombu's publish per message
    costs it twice as much): each message is done once, in the queue once, in order, and reads in plain kombu
    as the message kombu publishes does: body, headers (strings, numbers, nested, non-ASCII) and properties."""
    url = require_broker("redis", BROKERS["redis"])
    queue = Queue(name("batch"), durable=True, auto_delete=False)
    headers = {"x-kvm-host": "kvt-é", "x-kvm-expires-at": 1.5, "n": 7, "flag": True, "none": None, "l": [1, "☃"]}
    total = 120
    outcomes = Outcomes(total)
    with queues(url, queue):
        publisher = Publisher(open_connection(url, confirms=False))
        try:
            for i in range(total):  # the first declares the queue (kombu's publish): the rest queue up behind it
                publisher.publish_async(
                    b'{"a":"\xc3\xa9","i":%d}' % i,
                    routing_key=queue.name,
                    declare=(queue,) if i == 0 else (),
                    persistent=True,
                    headers=headers,
                    message_id=f"m{i}",
                    correlation_id=f"c{i}",
                    reply_to="kvt-reply",
                    done=outcomes.done_for(i),
                )
            assert outcomes.wait(20)
            counts = publisher.counts
        finally:
            publisher.close()
        with Connection(url) as conn:
            channel = conn.channel()
            seen = [queue.bind(channel).get(no_ack=True) for _ in range(total)]
            assert queue.bind(channel).get(no_ack=True) is None  # none twice
    assert outcomes.by_message == {i: [None] for i in range(total)}
    assert counts.batched > 0 and counts.failed == 0, counts
    assert [m.properties["message_id"] for m in seen] == [f"m{i}" for i in range(total)]
    kombus, *batched = seen
    for i, message in enumerate(seen):
        assert json.loads(message.body) == {"a": "\u00e9", "i": i}
        assert message.headers == kombus.headers == headers
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
        assert message.properties["correlation_id"] == f"c{i}"
    for message in batched:
        for key in ("reply_to", "delivery_mode", "priority", "body_encoding"):
            assert message.properties.get(key) == kombus.properties.get(key), key
        assert message.delivery_info["routing_key"] == kombus.delivery_info["routing_key"]


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "publishing-thread"])
def test_messages_larger_than_the_sockets_send_buffer_among_small_ones_arrive_whole_and_in_order_with_confirms(inline):
    """The confirming lane writes to the socket's descriptor at once and leaves what does not fit (a full send
    buffer) to py-amqp's waiting write; the publishing thread writes a batch of messages at once. Messages of
    several megabytes among small ones, sent in a burst, are each confirmed and read whole, in order, in kombu."""
    url = require_broker("amqp", AMQP_URL)
    queue = Queue(name("big"), durable=True, auto_delete=False)
    big = [json.dumps({"blob": uuid.uuid4().hex * 200_000}).encode() for _ in range(2)]  # 6.4 MB each
    bodies = [b"{}", big[0], *[b"{}"] * 5, big[1], *[b"{}"] * 5]
    with queues(url, queue):
        publisher = Publisher(open_connection(url, confirms=True))
        outcomes = Outcomes(len(bodies))
        try:
            publisher.publish(b"{}", routing_key=queue.name, declare=(queue,), message_id="declared")
            for i, body in enumerate(bodies):
                publisher.publish_async(
                    body, routing_key=queue.name, message_id=str(i), inline=inline, done=outcomes.done_for(i)
                )
            assert outcomes.wait(60), "a confirm did not come: the broker did not get every message whole"
            counts = publisher.counts
        finally:
            publisher.close(timeout=1)
        with Connection(url) as conn:
            channel = conn.channel()
            seen = [queue.bind(channel).get(no_ack=True) for _ in range(len(bodies) + 1)]
    assert outcomes.by_message == {i: [None] for i in range(len(bodies))}, counts
    assert counts.resent == 0 and counts.failed == 0, counts
    assert [m.properties["message_id"] for m in seen] == ["declared", *map(str, range(len(bodies)))]
    assert [m.body for m in seen[1:]] == [body.decode() for body in bodies]  # kombu decodes the utf-8 bodies


def test_over_redis_an_lpush_redis_refuses_in_a_write_of_many_fails_that_message_alone():
    """In one write of LPUSHes, one Redis refuses (its key holds a string: WRONGTYPE) goes to kombu's publish,
    which is refused too: that message fails (``done(exc)``); those around it are each done once and in their
    queue, in order."""
    import redis

    url = require_broker("redis", BROKERS["redis"])
    queue = Queue(name("good"), durable=True, auto_delete=False)
    wrong = name("wrongtype")
    db = redis.Redis.from_url(url, socket_timeout=10)
    db.set(wrong, "a string, not a list")
    total = 41
    outcomes = Outcomes(total)
    try:
        with queues(url, queue):
            publisher = Publisher(open_connection(url, confirms=False))
            try:
                for i in range(total):  # the first declares (kombu's publish): the rest queue up behind it
                    publisher.publish_async(
                        b"{}",
                        routing_key=wrong if i % 10 == 5 else queue.name,
                        declare=(queue,) if i == 0 else (),
                        message_id=str(i),
                        done=outcomes.done_for(i),
                    )
                assert outcomes.wait(20)
                counts = publisher.counts
            finally:
                publisher.close()
            good = drain(url, queue)
    finally:
        db.delete(wrong)
        db.close()
    refused = {i for i in range(total) if i % 10 == 5}
    assert {i for i, done in outcomes.by_message.items() if done != [None]} == refused
    assert all(
        len(done) == 1 and "WRONGTYPE" in str(done[0]) for i, done in outcomes.by_message.items() if i in refused
    )
    assert good == [str(i) for i in range(total) if i not in refused]
    assert counts.batched > 0 and counts.failed == len(refused), counts
