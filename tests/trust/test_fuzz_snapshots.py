"""Hostile snapshot names and descriptions through the real dispatcher (the style of test_fuzz_dispatch): every
reply is one documented code, a name outside the VM-name rules is 30006 before libvirt sees it, and what is
accepted comes back from libvirt unchanged."""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from tests.trust.hostile import NASTY_TEXT, assert_documented, fresh_msg_id, fuzz_settings, json_values

pytestmark = pytest.mark.netlink
EXAMPLES = int(os.environ.get("KVT_FUZZ_EXAMPLES", "400")) // 2
DERANDOMIZE = os.environ.get("KVT_FUZZ_RANDOM") != "1"
VM = "test"  # the running domain libvirt's test driver starts with
NAME_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
SNAPSHOT_COMMANDS = ("snapshot_create", "snapshot_revert", "snapshot_delete")


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the fuzzed worker runs in a network namespace of its own, which needs root")
    with fuzz_settings(tmp_path_factory.mktemp("fuzz-snap")) as config:
        assembly = assemble(config)
        yield assembly.pipeline
        assembly.close()


def answer(dispatcher, body: dict) -> dict:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    reply = dispatcher.handle(Delivery(body=raw, content_type="application/json", message_id=fresh_msg_id()))
    return reply.model_dump(mode="json")


snapshot_names = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=70), st.from_regex(NAME_RULE, fullmatch=True))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(SNAPSHOT_COMMANDS), snapshot=st.one_of(snapshot_names, json_values()))
def test_a_hostile_snapshot_name_gets_one_documented_reply_and_a_bad_one_is_30006(dispatcher, command, snapshot):
    reply = answer(dispatcher, {"handler": "VmHandler", "command": command, "dry_run": True,
                                "data": {"name": VM, "snapshot": snapshot, "memory": True}})  # fmt: skip
    assert_documented(reply)
    if not (isinstance(snapshot, str) and NAME_RULE.fullmatch(snapshot)):
        assert reply["code"] == 30006 and reply["data"]["field"].startswith("snapshot"), reply
    else:
        assert reply["code"] in {0, 30004, 30011}, reply


@pytest.mark.parametrize("snapshot", ["a", "a+b", "x.y-z_1", "9" * 64, "_"])
def test_an_accepted_name_and_a_description_full_of_xml_come_back_unchanged(dispatcher, snapshot):
    description = "<![CDATA[ ]]> & <domain/> \"quoted\" 'x' \t\n设备 🦀"
    data = {"name": VM, "snapshot": snapshot, "memory": True, "description": description}
    created = answer(dispatcher, {"handler": "VmHandler", "command": "snapshot_create", "data": data})
    assert created["code"] == 0, created
    listed = answer(dispatcher, {"handler": "VmHandler", "command": "snapshot_list", "data": {"name": VM}})
    found = {s["snapshot"]: s for s in listed["data"]["snapshots"]}
    assert found[snapshot]["description"] == description
    delete = {"name": VM, "snapshot": snapshot, "children": True}
    assert answer(dispatcher, {"handler": "VmHandler", "command": "snapshot_delete", "data": delete})["code"] == 0


@pytest.mark.parametrize("description", ["\x00", "a\x07b", "x" * 1025])
def test_a_description_libvirt_could_not_store_is_30006(dispatcher, description):
    data = {"name": VM, "snapshot": "kvt-desc", "memory": True, "description": description}
    reply = answer(dispatcher, {"handler": "VmHandler", "command": "snapshot_create", "data": data})
    assert reply["code"] == 30006 and reply["data"]["field"] == "description", reply
