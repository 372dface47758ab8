"""The guard through the real pipeline and journal (no broker): who is refused, with which code, and what runs."""

from __future__ import annotations

import json
import logging
import stat
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.dispatch.port import CapturingPort
from kvmworker.settings import Settings
from kvmworker.transport.names import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.trust.keys import KeyFileError, load_private_keys
from kvmworker.trust.middleware import TrustMiddleware
from kvmworker.trust.signing import Signer, load_worker_keys
from tests.support.handlers import ProbeHandler, count_of
from tests.trust.conftest import signer_of, write_trusted

HOST = "kvt-guard"
REPLY_TO = "kvmworker.reply.caller"


class Guarded:
    def __init__(self, tmp: Path, trusted: Path | None, reply_keys: Path | None = None):
        self.counters = tmp / "counters"
        self.counters.mkdir(exist_ok=True)
        settings = Settings(host=HOST, state_dir=tmp / "state", keys_file=reply_keys, trusted_keys_file=trusted)
        self.assembly = assemble(settings, extra_handlers=[ProbeHandler(self.counters)])
        self.pipeline = self.assembly.pipeline
        self.journal = self.assembly.journal

    def count(self, name: str = "g") -> int:
        return count_of(self.counters, name)


@pytest.fixture
def guarded(tmp_path, worker_trust, reply_keys_file):
    g = Guarded(tmp_path, worker_trust, reply_keys_file)
    yield g
    g.assembly.close()


@pytest.fixture
def open_worker(tmp_path):
    g = Guarded(tmp_path, None)
    yield g
    g.assembly.close()


def command(name: str = "g") -> bytes:
    return json.dumps({"handler": "ProbeHandler", "command": "count", "data": {"name": name}}).encode()


def request(
    signer: Signer | None,
    *,
    body: bytes | None = None,
    host: str = HOST,
    issued: float | None = None,
    validity: float = 30,
    msg_id: str | None = None,
) -> Delivery:
    body = body or command()
    msg_id = msg_id or str(uuid.uuid4())
    issued = time.time() if issued is None else issued
    headers = {HEADER_HOST: host, HEADER_ISSUED_AT: issued, HEADER_EXPIRES_AT: issued + validity}
    if signer is not None:
        headers |= signer.sign(body, msg_id, host, REPLY_TO, headers)
    return Delivery(body=body, content_type="application/json", headers=headers, message_id=msg_id, reply_to=REPLY_TO)


def published(g: Guarded, delivery: Delivery) -> tuple[Any, CapturingPort]:
    """The reply, and the port that saw whether (and where) it was published and how the message was settled."""
    port = CapturingPort()
    return g.pipeline.handle(delivery, port), port


def test_a_signed_command_for_this_host_runs(guarded, signer):
    assert guarded.pipeline.handle(request(signer)).code == 0
    assert guarded.count() == 1


def test_an_unsigned_command_is_refused_20004_runs_nothing_and_answers_nobody(guarded):
    reply, port = published(guarded, request(None))
    assert (reply.code, reply.msg) == (20004, "认证失败")
    assert port.published == [], "the worker must not answer a reply_to no signature covers"
    assert port.settled == [True]
    assert guarded.count() == 0


def test_a_refusal_is_journalled_under_the_messages_own_msg_id(guarded):
    req = request(None)
    guarded.pipeline.handle(req)
    entry = guarded.journal.store.find(req.message_id)
    assert (entry.state, entry.reply["code"]) == ("refused", 20004)


def test_a_command_whose_body_was_changed_after_signing_is_refused_without_a_reply(guarded, signer):
    reply, port = published(guarded, replace(request(signer), body=command("other")))
    assert reply.code == 20004 and "bad signature" in reply.data["detail"]
    assert port.published == []
    assert guarded.count("other") == 0


def test_a_redirected_reply_to_is_refused_and_the_new_queue_gets_nothing(guarded, signer):
    reply, port = published(guarded, replace(request(signer), reply_to="kvmworker.reply.victim"))
    assert reply.code == 20004
    assert port.published == []
    assert guarded.count() == 0


def test_a_command_signed_for_another_host_is_refused_but_its_signed_reply_to_is_answered(guarded, signer):
    reply, port = published(guarded, request(signer, host="kvt-other-host"))
    assert reply.code == 20004 and "kvt-other-host" in reply.data["detail"]
    assert [out.routing_key for out in port.published] == [REPLY_TO]
    assert guarded.count() == 0


def test_a_signed_command_that_arrives_expired_is_answered_20005_and_never_runs(guarded, signer):
    reply = guarded.pipeline.handle(request(signer, issued=time.time() - 120, validity=60))
    assert (reply.code, reply.msg) == (20005, "请求已过期")
    assert reply.data["late_s"] >= 59
    assert guarded.count() == 0


def test_a_command_late_by_less_than_the_clock_skew_allowance_still_runs(guarded, signer):
    assert guarded.pipeline.handle(request(signer, issued=time.time() - 12, validity=10)).code == 0
    assert guarded.count() == 1


def test_a_command_issued_in_the_future_is_refused(guarded, signer):
    reply = guarded.pipeline.handle(request(signer, issued=time.time() + 600))
    assert reply.code == 20004 and "future" in reply.data["detail"]
    assert guarded.count() == 0


def test_a_signature_valid_for_longer_than_a_day_is_refused(guarded, signer):
    reply = guarded.pipeline.handle(request(signer, validity=30 * 24 * 3600))
    assert reply.code == 20004 and "validity" in reply.data["detail"]


def test_a_signed_message_without_a_uuid_message_id_is_refused(guarded, signer):
    reply = guarded.pipeline.handle(request(signer, msg_id="not-a-uuid"))
    assert reply.code == 20004 and "message_id" in reply.data["detail"]
    assert guarded.count() == 0


def test_the_same_signed_message_delivered_twice_runs_once_and_both_get_its_reply(guarded, signer):
    first = request(signer)
    again = replace(first)  # the same bytes and properties, delivered again
    replies = [guarded.pipeline.handle(first), guarded.pipeline.handle(again)]
    assert [r.code for r in replies] == [0, 0]
    assert guarded.count() == 1


def test_a_command_that_expires_while_waiting_for_its_resource_never_runs(
    tmp_path, signer, worker_trust, reply_keys_file
):
    now = [time.time()]
    keys = load_worker_keys(Settings(host=HOST, keys_file=reply_keys_file, trusted_keys_file=worker_trust))

    class SitsBehindALongCommand(Middleware[None]):
        """Between admission and the run, a minute passes: the command on the same resource ahead of it."""

        def before_execute(self, msg: InFlight) -> None:
            now[0] += 60

    g = Guarded(tmp_path, None)
    guard = TrustMiddleware(HOST, keys, clock=lambda: now[0])
    pipeline = Pipeline(g.pipeline.registry, [SitsBehindALongCommand(), guard, g.journal])
    reply = pipeline.handle(request(signer, issued=now[0], validity=2))
    assert reply.code == 20005
    assert g.count() == 0
    g.assembly.close()


def test_a_worker_without_keys_runs_unsigned_commands_and_says_loudly_that_it_is_open(open_worker, caplog):
    with caplog.at_level(logging.WARNING, logger="kvmworker.trust"):
        assert open_worker.pipeline.handle(request(None)).code == 0
        assert open_worker.pipeline.handle(request(None)).code == 0
    warnings = [r for r in caplog.records if "RUNNING OPEN" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert open_worker.count() == 2


def test_a_worker_without_keys_still_refuses_an_expired_command(open_worker):
    assert open_worker.pipeline.handle(request(None, issued=time.time() - 3600, validity=60)).code == 20005
    assert open_worker.count() == 0


def test_a_legacy_message_without_any_headers_runs_on_an_open_worker(open_worker):
    req = Delivery(body=command(), content_type="application/json")
    assert open_worker.pipeline.handle(req).code == 0


def test_an_unreadable_expiry_header_is_a_malformed_request(open_worker):
    req = request(None)
    req = replace(req, headers={**req.headers, HEADER_EXPIRES_AT: "tomorrow"})
    assert open_worker.pipeline.handle(req).code == 20001
    assert open_worker.count() == 0


def test_a_worker_whose_trusted_keys_file_is_broken_refuses_to_start_instead_of_running_open(tmp_path):
    broken = tmp_path / "trusted.json"
    broken.write_text("{")
    with pytest.raises(KeyFileError):
        assemble(Settings(host=HOST, state_dir=tmp_path / "state", trusted_keys_file=broken))


def test_a_worker_given_only_a_keys_file_refuses_to_start_rather_than_run_open(tmp_path, reply_keys_file):
    with pytest.raises(KeyFileError, match="trusted_keys_file is not"):
        assemble(Settings(host=HOST, state_dir=tmp_path / "state", keys_file=reply_keys_file))


def test_a_worker_holding_the_orchestrators_private_key_file_as_its_trust_refuses_to_start(tmp_path, keys_file):
    with pytest.raises(KeyFileError):
        assemble(Settings(host=HOST, state_dir=tmp_path / "state", trusted_keys_file=keys_file))


def test_a_worker_makes_its_own_reply_key_in_its_state_directory_at_first_start(tmp_path, worker_trust):
    g = Guarded(tmp_path, worker_trust)
    made = tmp_path / "state" / "reply-keys.json"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    first = load_private_keys(made).public()
    g.assembly.close()
    g = Guarded(tmp_path, worker_trust)  # a restart keeps it
    assert load_private_keys(made).public() == first
    g.assembly.close()


def test_a_key_removed_from_the_trusted_file_stops_verifying_at_the_next_message_without_a_restart(
    guarded, signer, worker_trust, key_o1, key_o2
):
    write_trusted(worker_trust, orchestrator={"o1": key_o1, "o2": key_o2})
    assert guarded.pipeline.handle(request(signer)).code == 0
    write_trusted(worker_trust, orchestrator={"o2": key_o2})
    reply = guarded.pipeline.handle(request(signer))
    assert reply.code == 20004 and "unknown signing key id 'o1'" in reply.data["detail"]
    assert guarded.count() == 1


def test_a_trusted_file_broken_while_running_refuses_everything_until_fixed(guarded, signer, worker_trust, key_o1):
    worker_trust.write_text('{"orchestrator": ')
    reply = guarded.pipeline.handle(request(signer))
    assert reply.code == 20004 and "nothing verifies" in reply.data["detail"]
    write_trusted(worker_trust, orchestrator={"o1": key_o1})
    assert guarded.pipeline.handle(request(signer)).code == 0
    assert guarded.count() == 1


def test_a_worker_whose_reply_key_file_broke_sends_replies_unsigned_rather_than_requeue_them_forever(
    tmp_path, worker_trust, reply_keys_file
):
    keys = load_worker_keys(Settings(host=HOST, keys_file=reply_keys_file, trusted_keys_file=worker_trust))
    assert keys.sign_reply(b"{}", "c", str(uuid.uuid4()))["x-kvm-signature"].startswith("v2:r1:")
    reply_keys_file.chmod(0o644)
    assert keys.sign_reply(b"{}", "c", str(uuid.uuid4())) == {}


def test_the_reply_is_signed_with_the_workers_own_key_and_the_caller_can_verify_it(
    guarded, signer, keys_file, reply_key, tmp_path
):
    reply, port = published(guarded, request(signer))
    [out] = port.published
    caller = signer_of(keys_file, write_trusted(tmp_path / "caller-trusted.json", hosts={HOST: {"r1": reply_key}}))
    assert reply.code == 0
    assert caller.reply_is_authentic(out.body, out.correlation_id, out.message_id, out.headers, HOST)
    assert not caller.reply_is_authentic(out.body + b" ", out.correlation_id, out.message_id, out.headers, HOST)
