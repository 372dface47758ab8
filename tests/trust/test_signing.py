"""What a signature binds: change any bound field and it no longer verifies; rotation keeps old signatures valid."""

from __future__ import annotations

import uuid

import pytest

from kvmworker.protocol.errors import Unauthenticated
from kvmworker.transport.names import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT, HEADER_SIGNATURE
from kvmworker.trust.keys import KeyRing
from kvmworker.trust.signing import Signer

K1, K2 = b"1" * 32, b"2" * 32
BODY = b'{"handler":"SystemHandler","command":"ping","data":{}}'
MSG_ID = str(uuid.uuid4())


def ring(active: str, **keys: bytes) -> Signer:
    return Signer(KeyRing(active, keys))


def signed(signer: Signer, issued: object = 1_800_000_000.5, expires: object = 1_800_000_030.5) -> dict:
    headers = {HEADER_HOST: "h1", HEADER_ISSUED_AT: issued, HEADER_EXPIRES_AT: expires}
    return headers | signer.sign(BODY, MSG_ID, "h1", "reply.q", headers)


def verify(signer: Signer, headers: dict, body=BODY, msg_id=MSG_ID, host="h1", reply_to="reply.q") -> None:
    signer.verify(body, msg_id, host, reply_to, headers)


def test_a_signed_command_verifies_and_names_its_key():
    signer = ring("k1", k1=K1)
    headers = signed(signer)
    assert headers[HEADER_SIGNATURE].startswith("v1:k1:")
    verify(signer, headers)


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY.replace(b"ping", b"pong")},
        {"msg_id": str(uuid.uuid4())},
        {"host": "h2"},
        {"reply_to": "attacker.q"},
        {"reply_to": None},
        {"headers": {HEADER_ISSUED_AT: 1_800_000_001.5}},
        {"headers": {HEADER_EXPIRES_AT: 1_900_000_000}},
    ],
    ids=["body", "msg_id", "host", "reply_to", "reply_to-removed", "issued_at", "expires_at"],
)
def test_changing_any_bound_field_breaks_the_signature(change):
    signer = ring("k1", k1=K1)
    headers = signed(signer) | change.pop("headers", {})
    with pytest.raises(Unauthenticated, match="bad signature"):
        verify(signer, headers, **change)


def test_times_sign_the_same_whether_they_crossed_the_wire_as_floats_or_text():
    signer = ring("k1", k1=K1)
    headers = signed(signer)
    verify(signer, headers | {HEADER_ISSUED_AT: "1800000000.500000", HEADER_EXPIRES_AT: "1800000030.5"})


def test_during_rotation_both_keys_verify_and_the_new_active_key_signs():
    old, both = ring("k1", k1=K1), ring("k2", k1=K1, k2=K2)
    verify(both, signed(old))
    assert signed(both)[HEADER_SIGNATURE].startswith("v1:k2:")
    with pytest.raises(Unauthenticated, match="unknown signing key id 'k2'"):
        verify(old, signed(both))


def test_after_rotation_a_removed_key_no_longer_verifies():
    with pytest.raises(Unauthenticated, match="unknown signing key id 'k1'"):
        verify(ring("k2", k2=K2), signed(ring("k1", k1=K1)))


def test_a_key_id_that_names_another_key_does_not_verify():
    forged = signed(ring("k1", k1=K2))  # right id, wrong secret
    with pytest.raises(Unauthenticated, match="bad signature"):
        verify(ring("k1", k1=K1), forged)


@pytest.mark.parametrize("value", [None, "", "v1:k1", "v2:k1:00", "v1:k1:zz:extra", 12345, "v1:k1:ſſſſ"], ids=repr)
def test_a_missing_or_malformed_signature_header_is_unauthenticated(value):
    headers = signed(ring("k1", k1=K1)) | {HEADER_SIGNATURE: value}
    with pytest.raises(Unauthenticated):
        verify(ring("k1", k1=K1), headers)


@pytest.mark.parametrize("issued", [None, "soon", float("nan"), True], ids=repr)
def test_a_missing_or_non_numeric_time_cannot_be_signed_or_verified(issued):
    signer = ring("k1", k1=K1)
    headers = signed(signer) | {HEADER_ISSUED_AT: issued}
    with pytest.raises(Unauthenticated):
        verify(signer, headers)


def test_a_reply_signature_binds_body_correlation_id_and_msg_id():
    signer = ring("k1", k1=K1)
    headers = signer.sign_reply(b'{"code":0}', "corr-1", MSG_ID)
    assert signer.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, headers)
    assert not signer.reply_is_authentic(b'{"code":1}', "corr-1", MSG_ID, headers)
    assert not signer.reply_is_authentic(b'{"code":0}', "corr-2", MSG_ID, headers)
    assert not signer.reply_is_authentic(b'{"code":0}', "corr-1", str(uuid.uuid4()), headers)
    assert not signer.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, {})


def test_a_command_signature_cannot_pass_as_a_reply_signature():
    signer = ring("k1", k1=K1)
    headers = signed(signer)
    assert not signer.reply_is_authentic(BODY, MSG_ID, "h1", headers)
