"""What a signature binds, and who can make one: change any bound field and it no longer verifies; a worker's
keys cannot sign a command, and one host's reply key cannot vouch for another host's reply."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmworker.protocol.errors import Unauthenticated
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT, HEADER_SIGNATURE
from kvmworker.trust.keys import Fixed, PrivateKeys, TrustedKeys
from kvmworker.trust.signing import Signer, WorkerKeys

O1, O2, R_A, R_B = (Ed25519PrivateKey.generate() for _ in range(4))
BODY = b'{"handler":"SystemHandler","command":"ping","data":{}}'
MSG_ID = str(uuid.uuid4())


def orchestrator(active: str = "o1", hosts: dict | None = None, **keys: Ed25519PrivateKey) -> Signer:
    hosts = hosts if hosts is not None else {"h1": {"r1": R_A.public_key()}}
    return Signer(Fixed(PrivateKeys(active, keys or {"o1": O1})), Fixed(TrustedKeys(hosts=hosts)))


def worker(host: str = "h1", reply: Ed25519PrivateKey = R_A, **trusted: Ed25519PrivateKey) -> WorkerKeys:
    orch = {k: v.public_key() for k, v in (trusted or {"o1": O1}).items()}
    return WorkerKeys(host, Fixed(TrustedKeys(orchestrator=orch)), Fixed(PrivateKeys("r1", {"r1": reply})))


def signed(signer: Signer, issued: object = 1_800_000_000.5, expires: object = 1_800_000_030.5) -> dict:
    headers = {HEADER_HOST: "h1", HEADER_ISSUED_AT: issued, HEADER_EXPIRES_AT: expires}
    return headers | signer.sign(BODY, MSG_ID, "h1", "reply.q", headers)


def verify(keys: WorkerKeys, headers: dict, body=BODY, msg_id=MSG_ID, host="h1", reply_to="reply.q") -> None:
    keys.verify(body, msg_id, host, reply_to, headers)


def test_a_signed_command_verifies_and_names_its_key():
    headers = signed(orchestrator())
    assert headers[HEADER_SIGNATURE].startswith("v2:o1:")
    assert len(headers[HEADER_SIGNATURE].split(":")[2]) == 128
    verify(worker(), headers)


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
    headers = signed(orchestrator()) | change.pop("headers", {})
    with pytest.raises(Unauthenticated, match="bad signature"):
        verify(worker(), headers, **change)


def test_times_sign_the_same_whether_they_crossed_the_wire_as_floats_or_text():
    headers = signed(orchestrator())
    verify(worker(), headers | {HEADER_ISSUED_AT: "1800000000.500000", HEADER_EXPIRES_AT: "1800000030.5"})


def test_during_rotation_both_orchestrator_keys_verify_and_the_new_active_key_signs():
    old, new = orchestrator("o1", o1=O1), orchestrator("o2", o1=O1, o2=O2)
    both = worker(o1=O1, o2=O2)
    verify(both, signed(old))
    verify(both, signed(new))
    assert signed(new)[HEADER_SIGNATURE].startswith("v2:o2:")
    with pytest.raises(Unauthenticated, match="unknown signing key id 'o2'"):
        verify(worker(o1=O1), signed(new))


def test_after_rotation_a_removed_key_no_longer_verifies():
    with pytest.raises(Unauthenticated, match="unknown signing key id 'o1'"):
        verify(worker(o2=O2), signed(orchestrator("o1", o1=O1)))


def test_a_key_id_that_names_another_key_does_not_verify():
    forged = signed(orchestrator("o1", o1=O2))  # right id, wrong key
    with pytest.raises(Unauthenticated, match="bad signature"):
        verify(worker(o1=O1), forged)


def test_a_host_b_workers_reply_key_used_as_a_command_key_is_refused_by_host_a():
    """Everything a worker holds, used the only way it can be: its own private key, signing a command."""
    stolen = orchestrator("o1", o1=R_B)  # host B's reply key, under the orchestrator's key id
    with pytest.raises(Unauthenticated, match="bad signature"):
        verify(worker(), signed(stolen))
    stolen = orchestrator("r1", r1=R_B)  # under its own key id
    with pytest.raises(Unauthenticated, match="unknown signing key id 'r1'"):
        verify(worker(), signed(stolen))


def test_the_old_hmac_signature_format_is_refused_with_a_reason():
    headers = signed(orchestrator()) | {HEADER_SIGNATURE: "v1:k1:" + "0" * 64}
    with pytest.raises(Unauthenticated, match="v2:<key id>"):
        verify(worker(), headers)


@pytest.mark.parametrize(
    "value", [None, "", "v2:o1", "v1:o1:00", "v2:o1:zz:extra", 12345, "v2:o1:" + "ſ" * 128, "v2:o1:" + "zz" * 64]
)
def test_a_missing_or_malformed_signature_header_is_unauthenticated(value):
    headers = signed(orchestrator()) | {HEADER_SIGNATURE: value}
    with pytest.raises(Unauthenticated):
        verify(worker(), headers)


@pytest.mark.parametrize("issued", [None, "soon", float("nan"), True], ids=repr)
def test_a_missing_or_non_numeric_time_cannot_be_signed_or_verified(issued):
    headers = signed(orchestrator()) | {HEADER_ISSUED_AT: issued}
    with pytest.raises(Unauthenticated):
        verify(worker(), headers)


def test_a_reply_signature_binds_body_correlation_id_msg_id_and_host():
    client = orchestrator(hosts={"h1": {"r1": R_A.public_key()}, "h2": {"r1": R_A.public_key()}})
    headers = worker().sign_reply(b'{"code":0}', "corr-1", MSG_ID)
    assert client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, headers, "h1")
    assert not client.reply_is_authentic(b'{"code":1}', "corr-1", MSG_ID, headers, "h1")
    assert not client.reply_is_authentic(b'{"code":0}', "corr-2", MSG_ID, headers, "h1")
    assert not client.reply_is_authentic(b'{"code":0}', "corr-1", str(uuid.uuid4()), headers, "h1")
    assert not client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, {}, "h1")
    # the same key enrolled for h2 too: still h1's reply, not h2's
    assert not client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, headers, "h2")


def test_a_reply_signed_by_host_b_is_not_accepted_as_host_a_s():
    client = orchestrator(hosts={"h1": {"r1": R_A.public_key()}, "h2": {"r1": R_B.public_key()}})
    forged = worker("h1", reply=R_B).sign_reply(b'{"code":0}', "corr-1", MSG_ID)  # B's key, claiming to be h1
    assert not client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, forged, "h1")
    genuine_b = worker("h2", reply=R_B).sign_reply(b'{"code":0}', "corr-1", MSG_ID)
    assert client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, genuine_b, "h2")
    assert not client.reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, genuine_b, "h1")


def test_a_reply_from_a_host_without_an_enrolled_key_is_not_accepted():
    headers = worker("h9").sign_reply(b'{"code":0}', "corr-1", MSG_ID)
    assert not orchestrator().reply_is_authentic(b'{"code":0}', "corr-1", MSG_ID, headers, "h9")


def test_a_command_signature_cannot_pass_as_a_reply_signature():
    client = orchestrator(hosts={"h1": {"o1": O1.public_key()}})  # even if the same key were enrolled for both
    headers = signed(client)
    assert not client.reply_is_authentic(BODY, MSG_ID, "h1", headers, "h1")
