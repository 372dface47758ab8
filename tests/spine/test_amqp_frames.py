"""The worker writes its replies' and settlings' AMQP frames itself (transport/amqp_session.py, with
transport/amqp_frames.py): byte for byte what py-amqp's own frame writer writes for the same publish, ack and
reject. End to end the fault suites and tests/spine/test_end_to_end.py prove the broker takes them; this pins the
cases those rarely reach (a body split over several frames, an empty body, non-ASCII headers)."""

from __future__ import annotations

import pytest
from amqp import Message, spec
from amqp.serialization import dumps

from kvmworker.dispatch.port import Outgoing
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.amqp_frames import settle_frame
from kvmworker.transport.amqp_session import _publish_frames
from tests.support.py_amqp import FRAME_MAX, py_amqp_frames


@pytest.mark.parametrize("size", [0, 10, FRAME_MAX - 8, 300_000], ids=["empty", "small", "one-frame-max", "3-frames"])
def test_a_reply_is_framed_as_py_amqp_frames_it(size):
    outgoing = Outgoing(b"x" * size, "amq.gen-kvt", "cid-1", "mid-2", {"kvmworker-msg-id": "mid-2", "sig": "é"})
    message = Message(
        outgoing.body,
        content_type=JSON_CONTENT_TYPE,
        content_encoding="utf-8",
        application_headers=dict(outgoing.headers),
        delivery_mode=1,
        correlation_id=outgoing.correlation_id,
        message_id=outgoing.message_id,
    )
    args = dumps("Bssbb", (0, "", outgoing.routing_key, False, False))
    assert _publish_frames(2, FRAME_MAX, outgoing) == py_amqp_frames(2, spec.Basic.Publish, args, message)


@pytest.mark.parametrize(
    "headers",
    [{}, {"kvmworker-msg-id": "m", "x-kvm-signature": "v1:" + "é" * 300}, {"n": 7, "f": 0.5, "t": True, "s": "x"}],
    ids=["no-headers", "long-non-ascii-text", "numbers-and-flags"],
)
def test_a_replys_properties_are_encoded_as_py_amqp_encodes_them_whatever_its_headers_hold(headers):
    outgoing = Outgoing(b"{}", "amq.gen-kvt", "cid-ü", "mid-2", headers)
    message = Message(
        b"{}",
        content_type=JSON_CONTENT_TYPE,
        content_encoding="utf-8",
        application_headers=dict(headers),
        delivery_mode=1,
        correlation_id=outgoing.correlation_id,
        message_id=outgoing.message_id,
    )
    args = dumps("Bssbb", (0, "", outgoing.routing_key, False, False))
    assert _publish_frames(1, FRAME_MAX, outgoing) == py_amqp_frames(1, spec.Basic.Publish, args, message)


@pytest.mark.parametrize("ack", [True, False], ids=["ack", "reject-requeue"])
def test_an_ack_and_a_reject_are_framed_as_py_amqp_frames_them(ack):
    method = spec.Basic.Ack if ack else spec.Basic.Reject
    assert settle_frame(1, 2**40 + 7, ack) == py_amqp_frames(1, method, dumps("Lb", (2**40 + 7, not ack)))
