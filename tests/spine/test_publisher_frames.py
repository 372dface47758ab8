"""The publisher writes a command's AMQP frames itself (transport/publisher.py ``publish_frames``): byte for byte
what py-amqp's frame writer writes for the same publish. End to end, tests/spine and the fault suites prove the
broker takes them; this pins the cases those rarely reach (a body over several frames, an empty body, non-ASCII
headers, a named exchange) and what is left to py-amqp (a timestamp, a property it does not know)."""

from __future__ import annotations

import pytest
from amqp import Message, spec
from amqp.serialization import dumps

from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.publisher import _Pending, publish_frames
from tests.support.py_amqp import FRAME_MAX, py_amqp_frames


def _pending(body: bytes, exchange: str = "", **properties) -> _Pending:
    headers = {"kvmworker-host": "kvt-é", "kvmworker-expires-at": 1.5, "n": 7}
    return _Pending(body, exchange, "kvmworker.kvt-host", headers, properties, (), lambda exc: None)


def _py_amqp(channel: int, item: _Pending) -> bytes:
    """What the publisher wrote before it framed messages itself: kombu's prepare_message, py-amqp's publish."""
    message = Message(
        item.body,
        priority=None,
        content_type=JSON_CONTENT_TYPE,
        content_encoding="utf-8",
        application_headers=item.headers,
        **item.properties,
    )
    args = dumps("Bssbb", (0, item.exchange, item.routing_key, False, False))
    return py_amqp_frames(channel, spec.Basic.Publish, args, message)


COMMAND = {"delivery_mode": 2, "message_id": "mid-1", "correlation_id": "cid-2", "reply_to": "kvmworker.reply.x"}


@pytest.mark.parametrize("size", [0, 10, FRAME_MAX - 8, 300_000], ids=["empty", "small", "one-frame-max", "3-frames"])
def test_a_command_is_framed_as_py_amqp_frames_it(size):
    item = _pending(b"x" * size, **COMMAND)
    assert publish_frames(3, FRAME_MAX, item) == _py_amqp(3, item)


def test_a_transient_message_to_a_named_exchange_with_other_properties_is_framed_as_py_amqp_frames_it():
    item = _pending(b"{}", exchange="kvmworker", delivery_mode=1, expiration="60000", type="t", app_id="a")
    assert publish_frames(1, FRAME_MAX, item) == _py_amqp(1, item)


@pytest.mark.parametrize("properties", [{"timestamp": 1700000000}, {"x-unknown": "1"}], ids=["timestamp", "unknown"])
def test_what_it_does_not_frame_is_left_to_py_amqp(properties):
    assert publish_frames(1, FRAME_MAX, _pending(b"{}", **properties)) is None


def test_a_routing_key_longer_than_a_short_string_is_left_to_py_amqp():
    item = _pending(b"{}")
    item.routing_key = "k" * 256
    assert publish_frames(1, FRAME_MAX, item) is None


def test_a_transient_command_with_no_headers_to_the_same_queue_on_two_channels_is_framed_as_py_amqp_frames_it():
    for channel in (1, 2, 1):  # the method frame is kept per channel and queue: each channel's own
        item = _pending(b"{}", **{**COMMAND, "delivery_mode": 1})
        item.headers = {}
        assert publish_frames(channel, FRAME_MAX, item) == _py_amqp(channel, item)


def test_a_command_to_a_queue_named_longer_than_a_short_string_is_left_to_py_amqp():
    item = _pending(b"{}", **COMMAND)
    item.routing_key = "k" * 256
    assert publish_frames(1, FRAME_MAX, item) is None


@pytest.mark.parametrize("host", ["kvt-host", "kvt-é" * 100], ids=["ascii", "long-non-ascii"])
def test_a_command_with_the_clients_own_headers_is_framed_as_py_amqp_frames_it(host):
    """The client's unsigned command (its host, issued-at and expires-at headers, in that order) has its headers
    encoded without the generic table walk: the same bytes; in another order or with other kinds, the same too."""
    for headers in (
        {"x-kvm-host": host, "x-kvm-issued-at": 1700000000.123456, "x-kvm-expires-at": 1700000030.5},
        {"x-kvm-issued-at": 1.0, "x-kvm-host": host, "x-kvm-expires-at": 2.0},
        {"x-kvm-host": host, "x-kvm-issued-at": 1.0, "x-kvm-expires-at": "later"},
    ):
        item = _pending(b'{"handler":"SystemHandler"}', **COMMAND)
        item.headers = headers
        assert publish_frames(2, FRAME_MAX, item) == _py_amqp(2, item)
