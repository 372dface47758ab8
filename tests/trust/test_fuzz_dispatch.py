"""The message fuzzer through the real pipeline, middleware and journal: every input gets one documented reply."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.protocol.codec import encode_reply
from tests.trust.hostile import (
    NASTY_TEXT,
    Hostile,
    assert_documented,
    classics,
    fresh_msg_id,
    fuzz_settings,
    json_values,
    messages,
)

pytestmark = pytest.mark.netlink
EXAMPLES = int(os.environ.get("KVT_FUZZ_EXAMPLES", "400"))
SEEN: Counter[int] = Counter()
# The same examples on every run (CI stays reproducible); KVT_FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("KVT_FUZZ_RANDOM") != "1"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the fuzzed worker runs in a network namespace of its own, which needs root")
    tmp = tmp_path_factory.mktemp("fuzz")
    with fuzz_settings(tmp) as config:
        assembly = assemble(config)
        pipeline = assembly.pipeline
        pipeline.images = config.storage_dirs[0]
        yield pipeline
        assembly.close()


def answer(pipeline, hostile: Hostile) -> dict:
    delivery = Delivery(body=hostile.body, content_type=hostile.content_type, message_id=fresh_msg_id())
    reply = pipeline.handle(delivery)
    return reply.model_dump(mode="json") | {"_bytes": len(encode_reply(reply))}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_message_gets_exactly_one_reply_with_a_documented_code(pipeline, data):
    hostile = data.draw(messages(pipeline.registry))
    reply = answer(pipeline, hostile)
    reply.pop("_bytes")
    assert_documented(reply)
    SEEN[reply["code"]] += 1


def test_the_fuzzer_reached_past_the_envelope_into_the_commands(pipeline):
    """A fuzzer that only ever produced broken JSON would prove little: it must have been answered at every layer."""
    if not SEEN:
        pytest.skip("runs after the fuzz test in the same session (it reads what that one saw)")
    assert {20001, 20002, 20003, 0} <= set(SEEN), SEEN
    assert set(SEEN) & {30001, 30002, 30003, 30004, 30005, 30006, 30007}, SEEN


@pytest.mark.parametrize("case", list(classics(Path("/"))))
def test_each_classic_hostile_input_gets_its_documented_code(pipeline, case):
    hostile, codes = classics(pipeline.images)[case]
    reply = answer(pipeline, hostile)
    assert reply["code"] in codes, reply
    assert reply["_bytes"] < 64 * 1024, "a reply must not echo a hostile body back"


def test_the_worker_still_answers_a_ping_after_the_fuzzing(pipeline):
    body = b'{"handler":"SystemHandler","command":"ping","data":{}}'
    assert answer(pipeline, Hostile(body))["code"] == 0


def test_a_null_address_for_addr_add_is_answered_30006_not_99999(pipeline):
    body = b'{"handler":"DeviceHandler","command":"addr_add","data":{"name":"kvt0","address":null},"dry_run":true}'
    assert answer(pipeline, Hostile(body))["code"] == 30006


STORAGE_COMMANDS = ["volumes", "volume_create", "volume_clone", "volume_resize", "volume_delete"]
HOSTILE_PATHS = [*NASTY_TEXT, "/etc/shadow", "a/../../b", "/proc/self/root/etc/shadow", "json:{}", "nbd://x/y", " "]
NAMES = st.sampled_from(HOSTILE_PATHS) | st.text(max_size=20) | st.just("kvt-ok.qcow2")
SIZES = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20) | json_values()


def _not_a_plain_name(value: object) -> bool:
    return isinstance(value, str) and (not value or "/" in value or ".." in value or "\0" in value or value[0] in ".-")


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
@given(
    command=st.sampled_from(STORAGE_COMMANDS),
    fields=st.fixed_dictionaries(
        {},
        optional={"pool": NAMES | st.just("default-pool"), "name": NAMES, "source": NAMES, "size_gib": SIZES},
    ),
    linked=st.booleans(),
)
def test_hostile_volume_names_paths_and_sizes_get_documented_codes_and_paths_never_pass(
    pipeline, command, fields, linked
):
    body = {"handler": "StorageHandler", "command": command, "data": {**fields, "linked": linked}, "dry_run": True}
    reply = answer(pipeline, Hostile(json.dumps(body).encode()))
    reply.pop("_bytes")
    assert_documented(reply)
    checked = ("pool",) if command == "volumes" else ("pool", "name")  # volumes takes no name
    if any(_not_a_plain_name(fields.get(key)) for key in checked):
        assert reply["code"] == 30006, (fields, reply)
    if reply["code"] == 0 and command != "volumes":
        assert reply["data"]["dry_run"] is True
