"""The fuzzer over real RabbitMQ and Redis with raw kombu publishers: one documented reply each, worker serving on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmworker.runtime import start_worker
from tests.trust.hostile import Hostile, assert_documented, classics, fuzz_settings, messages
from tests.trust.wire import Outgoing, RawPublisher

pytestmark = [pytest.mark.broker, pytest.mark.netlink, pytest.mark.slow]
EXAMPLES = int(os.environ.get("KVT_FUZZ_BUS_EXAMPLES", "60"))
PING = b'{"handler":"SystemHandler","command":"ping","data":{}}'


@pytest.fixture
def fuzzed(real_broker, tmp_path, request):
    """A worker that cannot hurt the host, on a real broker; with keys when the test asks for them."""
    if os.geteuid() != 0:
        pytest.skip("the fuzzed worker runs in a network namespace of its own, which needs root")
    extra = {}
    if "signer" in request.fixturenames:
        extra = {
            "trusted_keys_file": request.getfixturevalue("worker_trust"),
            "keys_file": request.getfixturevalue("reply_keys_file"),
        }
    with fuzz_settings(tmp_path, broker_url=real_broker, **extra) as config:
        running = start_worker(config)
        assert running.worker.connected.wait(15), "worker did not connect to the broker"
        publisher = RawPublisher(real_broker, config.host)
        publisher.images = config.storage_dirs[0]
        publisher.registry = running.pipeline.registry
        yield publisher
        publisher.close()
        running.stop(timeout=10)


def send(raw: RawPublisher, hostile: Hostile) -> str:
    return raw.send(Outgoing(hostile.body, content_type=hostile.content_type, reply_to=raw.reply_queue.name))


def assert_serving(raw: RawPublisher) -> None:
    [reply] = raw.wait(send(raw, Hostile(PING)), 10)
    assert reply.body["code"] == 0


def test_every_fuzzed_message_gets_exactly_one_documented_reply_and_the_worker_keeps_serving(fuzzed):
    sent: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=os.environ.get("KVT_FUZZ_RANDOM") != "1",  # reproducible in CI, like the in-process fuzzer
    )
    @given(data=st.data())
    def one(data):
        correlation_id = send(fuzzed, data.draw(messages(fuzzed.registry)))
        replies = fuzzed.wait(correlation_id, 10)
        assert len(replies) == 1, replies
        assert_documented(replies[0].body)
        sent.append(correlation_id)

    one()
    fuzzed.drain(1.0)  # a second reply to anything would have arrived by now
    assert [c for c in sent if len(fuzzed.replies[c]) != 1] == []
    assert_serving(fuzzed)


def test_each_classic_hostile_input_over_the_bus_gets_one_reply_with_its_code(fuzzed):
    got: dict[str, str] = {}
    cases = classics(fuzzed.images)
    for case, (hostile, _) in cases.items():  # one worker for all: starting one per case costs more than the cases
        correlation_id = send(fuzzed, hostile)
        fuzzed.wait(correlation_id, 30)
        got[case] = correlation_id
    fuzzed.drain(0.5)
    codes = {case: [r.body["code"] for r in fuzzed.replies.get(c, [])] for case, c in got.items()}
    wrong = {case: seen for case, seen in codes.items() if len(seen) != 1 or seen[0] not in cases[case][1]}
    assert wrong == {}, f"not exactly one reply with the expected code: {wrong}"
    assert not Path("/tmp/kvt-pwned").exists()
    assert_serving(fuzzed)


def test_a_keyed_worker_answers_no_unsigned_hostile_input_and_keeps_serving_signed_callers(fuzzed, signer):
    correlation_ids = [send(fuzzed, hostile) for hostile, _ in classics(fuzzed.images).values()]
    fuzzed.drain(2.0)
    assert all(fuzzed.replies.get(c) is None for c in correlation_ids)
    out = fuzzed.sign(fuzzed.message(PING), signer)
    [reply] = fuzzed.wait(fuzzed.send(out), 10)
    assert reply.body["code"] == 0
