"""Passwords, tokens and keys never reach the journal file, at any depth, in requests, headers or replies."""

from __future__ import annotations

import json
from pathlib import Path

from kvmworker.dispatch.delivery import Delivery
from kvmworker.journal.redaction import MASK, is_sensitive, may_hold_secret, redact, redact_text
from kvmworker.protocol.codes import Code
from tests.journal.conftest import new_id

SECRET = "hunter2-kvt-do-not-store"


def journal_bytes(state_dir: Path) -> bytes:
    """The database, its WAL and shared memory: wherever SQLite may have put a page."""
    return b"".join(p.read_bytes() for p in state_dir.iterdir() if p.is_file())


def test_a_login_password_never_appears_in_the_journal_file(wired):
    reply = wired.send("EffectsHandler", "login", {"username": "ops", "password": SECRET}, msg_id=new_id())
    assert reply.code == Code.OK
    stored = journal_bytes(wired.settings.state_dir)
    assert b"ops" in stored  # the entry is there...
    assert SECRET.encode() not in stored  # ...its password is not
    assert SECRET[::-1].encode() not in stored  # nor the token in the reply


def test_secrets_nested_in_data_and_headers_are_masked(wired):
    msg_id = new_id()
    data = {"username": "ops", "password": "x", "options": {"auth": [{"api_key": SECRET}], "ssh": {"privkey": SECRET}}}
    wired.send("EffectsHandler", "login", data, msg_id=msg_id, headers={"Authorization": f"Bearer {SECRET}"})
    entry = wired.journal.store.find(msg_id)
    assert entry.envelope["data"]["options"]["auth"][0]["api_key"] == MASK
    assert entry.envelope["data"]["options"]["ssh"]["privkey"] == MASK
    assert entry.properties["headers"]["Authorization"] == MASK
    assert SECRET.encode() not in journal_bytes(wired.settings.state_dir)


def test_a_body_that_is_not_json_is_recorded_with_its_secrets_masked(wired):
    body = f'{{"handler": "UserHandler", "command": "login", "data": {{"password": "{SECRET}",'.encode()
    reply = wired.pipeline.handle(Delivery(body=body, content_type="application/json"))
    assert reply.code == Code.INVALID_REQUEST
    wired.journal.store.flush()  # a refusal is committed soon after, not before the reply: here, now
    assert SECRET.encode() not in journal_bytes(wired.settings.state_dir)
    assert b"UserHandler" in journal_bytes(wired.settings.state_dir)


def test_ordinary_fields_that_merely_contain_key_like_letters_are_kept():
    value = {"network_id": "n1", "monkey": 1, "keyboard": "us", "vlan_id": 7, "key": "k", "ssh_keys": ["a"]}
    assert redact(value) == {"network_id": "n1", "monkey": 1, "keyboard": "us", "vlan_id": 7, "key": MASK,
                             "ssh_keys": MASK}  # fmt: skip


def test_sensitive_names_are_recognised_in_any_spelling():
    for name in ("password", "Password", "db_passwd", "X-Auth-Token", "client_secret", "x-kvm-signature", "API-KEY"):
        assert is_sensitive(name), name
    for name in ("name", "network_type", "mtu", "keyboard"):
        assert not is_sensitive(name), name


def test_bearer_tokens_and_name_value_pairs_are_masked_in_free_text():
    text = f"Authorization: Bearer {SECRET} password={SECRET}&user=ops 'token': '{SECRET}'"
    masked = redact_text(text)
    assert SECRET not in masked
    assert "user=ops" in masked


def test_a_vnc_password_inside_domain_xml_is_masked_in_the_journal_and_the_dry_run_reply(tmp_path):
    from tests.journal.conftest import wire

    images = tmp_path / "images"
    images.mkdir()
    wired = wire(tmp_path / "state", tmp_path / "effects", libvirt_uri="test:///default", storage_dirs=[images])
    xml = (
        "<domain type='test'><name>kvt-vnc-secret</name><memory unit='MiB'>32</memory><os><type>hvm</type></os>"
        f"<devices><graphics type='vnc' autoport='yes' passwd='{SECRET}'/></devices></domain>"
    )
    msg_id = new_id()
    reply = wired.send("VmHandler", "define", {"xml": xml}, msg_id=msg_id, dry_run=True)
    assert reply.code == Code.OK, reply.data
    assert SECRET not in reply.data["xml"] and 'passwd="***"' in reply.data["xml"]
    assert SECRET.encode() not in journal_bytes(wired.settings.state_dir)
    assert "passwd='***'" in wired.journal.store.find(msg_id).envelope["data"]["xml"]


def test_secret_attributes_are_masked_in_xml_text_and_others_kept():
    xml = f"""<graphics type="spice" passwd = "{SECRET}" keymap='en-us'/><x:a xmlns:x='u' x:password='{SECRET}'/>"""
    masked = redact({"xml": xml})["xml"]
    assert SECRET not in masked
    assert "keymap='en-us'" in masked and 'type="spice"' in masked


def test_a_secret_key_spelled_with_a_unicode_escape_is_still_masked_in_the_journal(wired):
    msg_id = new_id()
    body = f'{{"handler": "EffectsHandler", "command": "login", "msg_id": "{msg_id}", '
    body += f'"data": {{"username": "ops", "pa\\u0073sword": "{SECRET}"}}}}'
    reply = wired.pipeline.handle(Delivery(body=body.encode(), content_type="application/json"))
    assert reply.code == Code.OK
    assert wired.journal.store.find(msg_id).envelope["data"]["password"] == MASK
    assert SECRET.encode() not in journal_bytes(wired.settings.state_dir)


def test_an_envelope_with_nothing_to_mask_is_recorded_as_the_json_it_came_as(wired):
    msg_id = new_id()
    body = f'{{ "handler" : "SystemHandler", "command": "ping", "data": {{}}, "msg_id": "{msg_id}", "note": [1, 2.5] }}'
    reply = wired.pipeline.handle(Delivery(body=body.encode(), content_type="application/json"))
    assert reply.code == Code.OK
    entry = wired.journal.store.find(msg_id)
    assert entry.envelope == json.loads(body)  # unknown fields included, as before
    assert entry.reply == reply.model_dump(mode="json")


def test_a_read_only_reply_holding_a_secret_is_masked_while_its_clean_envelope_is_kept_as_it_came(wired):
    msg_id = new_id()
    body = f'{{"handler": "EffectsHandler", "command": "issue", "data": {{}}, "msg_id": "{msg_id}", "note": 1}}'
    reply = wired.pipeline.handle(Delivery(body=body.encode(), content_type="application/json", reply_to="kvt-r"))
    assert reply.code == Code.OK and reply.data["token"] == "tok-kvt-read-only-secret"
    entry = wired.journal.store.find(msg_id)
    assert entry.state == "answered"
    assert entry.reply["data"]["token"] == MASK
    assert entry.envelope == json.loads(body)
    assert entry.properties["reply_to"] == "kvt-r"
    assert b"tok-kvt-read-only-secret" not in journal_bytes(wired.settings.state_dir)


def test_a_secret_header_on_a_read_only_command_is_masked_and_its_clean_reply_kept_as_sent(wired):
    msg_id = new_id()
    body = f'{{"handler": "SystemHandler", "command": "ping", "data": {{}}, "msg_id": "{msg_id}"}}'
    headers = {"Authorization": f"Bearer {SECRET}", "x-kvt-note": "kept"}
    reply = wired.pipeline.handle(Delivery(body=body.encode(), content_type="application/json", headers=headers))
    assert reply.code == Code.OK
    entry = wired.journal.store.find(msg_id)
    assert entry.properties["headers"] == {"Authorization": MASK, "x-kvt-note": "kept"}
    assert entry.envelope == json.loads(body)
    assert entry.reply == reply.model_dump(mode="json")
    assert SECRET.encode() not in journal_bytes(wired.settings.state_dir)


def test_may_hold_secret_says_yes_for_everything_redact_would_change():
    for text in ('{"Password": 1}', '{"x": "Bearer abc"}', '{"x": "<g passwd=\'a\'/>"}', '{"API-KEY": 1}',
                 '{"pa\\u0073s": 1}', '{"x": "ba\u017fic abc"}', '{"\u212aey": 1}', '{"cookie": 1}',
                 '{"msg": "成功", "api_key": 1}', '{"描述": "Bearer abc"}', '{"成功": {"passwd": "é"}}'):  # fmt: skip
        assert may_hold_secret(text), text
        assert redact(json.loads(text)) != json.loads(text) or "\\u" in text or "\u017f" in text, text
    for text in ('{"handler": "SystemHandler", "command": "ping", "data": {}}', '{"msg": "成功", "uptime": 1.5}'):
        assert not may_hold_secret(text), text
        assert redact(json.loads(text)) == json.loads(text)
