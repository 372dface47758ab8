"""The worker decodes each delivery's AMQP properties itself (transport/amqp_properties.py): exactly what
py-amqp's ``decode_properties_basic`` returns for the same content header, whatever the header holds.
End to end, tests/spine/test_end_to_end.py and the fault suites run every delivery through it."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from amqp import Message
from amqp.serialization import decode_properties_basic

from kvmworker.transport.amqp_properties import decode_properties

EVERY_PROPERTY = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "application_headers": {"x-kvm-host": "kvt-h", "x-kvm-issued-at": 1764526140.123456, "n": -5, "big": 2**40},
    "delivery_mode": 2,
    "priority": 7,
    "correlation_id": "cid-ü",
    "reply_to": "amq.gen-kvt",
    "expiration": "60000",
    "message_id": "0b9e2f1c-3a4b-4c5d-8e9f-0a1b2c3d4e5f",
    "timestamp": 1764526140,
    "type": "kvt",
    "user_id": "guest",
    "app_id": "kvmworker",
    "cluster_id": "c1",
}


def _header(**properties) -> bytes:
    return b"\0\0" + Message(b"", **properties)._serialize_properties()  # two octets before the flags, as in a frame


@pytest.mark.parametrize(
    "properties",
    [
        {},
        EVERY_PROPERTY,
        {"content_type": "application/json", "correlation_id": "c", "reply_to": "r", "message_id": "m"},
        {"application_headers": {}},
        {"application_headers": {"flag": True, "off": False, "none": None, "ü-key": "välue", "raw": b"\xff\xfe"}},
        {"application_headers": {"nested": {"a": 1}, "list": [1, "x"], "when": datetime.datetime(2026, 1, 1)}},
        {"application_headers": {"dec": Decimal("1.5"), "after": "kept"}, "message_id": "m"},
    ],
    ids=["none", "every-property", "what-clients-send", "empty-table", "flags-void-text-bytes", "nested", "decimal"],
)
def test_a_deliverys_properties_decode_exactly_as_py_amqp_decodes_them(properties):
    header = _header(**properties)
    assert decode_properties(header, 2) == decode_properties_basic(header, 2)[0]
