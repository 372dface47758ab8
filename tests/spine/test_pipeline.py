"""The pipeline alone, through ports a test holds: when a message is published, settled, given back, refused."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

from kvmworker.dispatch.commands import HandlerRegistry, command
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.executor import KeyedExecutor
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware, Refusal
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.dispatch.port import CapturingPort, Done, Outgoing
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from tests.support.handlers import ProbeHandler

REPLY_TO = "kvmworker.reply.kvt-pipeline"


def delivery(command: str, data: dict[str, Any], handler: str = "ProbeHandler", **props: Any) -> Delivery:
    body = json.dumps({"handler": handler, "command": command, "data": data}).encode()
    return Delivery(body=body, content_type="application/json", **props)


class LaterPort(CapturingPort):
    """Publishes when the test says so, as publisher confirms arrive later from another thread."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Done] = []
        self.was_settled = threading.Event()

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        self.published.append(outgoing)
        self.pending.append(done)

    def settle(self, ack: bool) -> None:
        super().settle(ack)
        self.was_settled.set()

    def finish(self, error: BaseException | None = None) -> None:
        confirm = threading.Thread(target=self.pending.pop(), args=(error,))
        confirm.start()
        confirm.join()


class SettledPort(CapturingPort):
    def __init__(self) -> None:
        super().__init__()
        self.was_settled = threading.Event()

    def settle(self, ack: bool) -> None:
        super().settle(ack)
        self.was_settled.set()


class GateHandler:
    """``hold`` runs until the test opens the gate; every ``hold`` waits behind the one before (one resource)."""

    name = "GateHandler"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    @command(mutates=False, resource=lambda data: "gate")
    def hold(self, data: object, ctx: object) -> dict:
        self.started.set()
        self.gate.wait(10)
        return {"held": True}


class Recorder(Middleware[list]):
    """Records each hook call, and what it kept in the message's slot."""

    def __init__(self, name: str, calls: list[tuple[str, str]]):
        self.name, self.calls = name, calls

    def new_state(self) -> list:
        return []

    def on_receive(self, msg: InFlight) -> None:
        self.calls.append((self.name, "on_receive"))
        msg.state_of(self).append(msg.delivery.message_id)

    def before_execute(self, msg: InFlight) -> None:
        self.calls.append((self.name, "before_execute"))

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        self.calls.append((self.name, f"after_reply {msg.state_of(self)}"))


def test_a_message_is_acked_only_once_its_reply_is_published():
    port = LaterPort()
    Pipeline(HandlerRegistry([ProbeHandler()])).receive(delivery("echo", {"text": "hi"}, reply_to=REPLY_TO), port)
    assert len(port.published) == 1
    assert port.settled == [], "acked before the publish was confirmed"
    port.finish()
    assert port.settled == [True]


def test_a_reply_that_cannot_be_published_sends_the_message_back_to_the_queue(caplog):
    port = LaterPort()
    Pipeline(HandlerRegistry([ProbeHandler()])).receive(delivery("echo", {"text": "hi"}, reply_to=REPLY_TO), port)
    with caplog.at_level(logging.ERROR, logger="kvmworker.dispatch"):
        port.finish(ConnectionError("the broker went away"))
    assert port.settled == [False]
    assert "could not be published" in caplog.text and "the broker went away" in caplog.text


def test_the_reply_goes_to_reply_to_with_the_callers_correlation_id_and_the_msg_id():
    msg_id = str(uuid.uuid4())
    port = CapturingPort()
    sent = delivery("echo", {"text": "hi"}, reply_to=REPLY_TO, correlation_id="kvt-corr", message_id=msg_id)
    reply = Pipeline(HandlerRegistry([ProbeHandler()])).handle(sent, port)
    [out] = port.published
    assert (out.routing_key, out.correlation_id, out.message_id) == (REPLY_TO, "kvt-corr", msg_id)
    assert out.headers["x-kvm-msg-id"] == msg_id
    expected = {"code": 0, "msg": "成功", "data": {"text": "hi", "msg_id": msg_id}}
    assert json.loads(out.body) == reply.model_dump(mode="json") == expected
    assert port.settled == [True]


def test_a_message_without_reply_to_is_answered_to_nobody_and_acked():
    port = CapturingPort()
    reply = Pipeline(HandlerRegistry([ProbeHandler()])).handle(delivery("echo", {"text": "hi"}), port)
    assert reply.code == 0
    assert (port.published, port.settled) == ([], [True])


def test_a_reply_that_does_not_serialise_is_published_as_99999():
    port = CapturingPort()
    reply = Pipeline(HandlerRegistry([ProbeHandler()])).handle(delivery("unserialisable", {}, reply_to=REPLY_TO), port)
    assert reply.code == Code.INTERNAL_ERROR
    assert json.loads(port.published[0].body)["code"] == Code.INTERNAL_ERROR


def test_a_stopped_pipeline_finishes_what_runs_and_gives_back_what_waits_behind_it():
    gate = GateHandler()
    pipeline = Pipeline(HandlerRegistry([gate]), executor=KeyedExecutor(2, name="kvt-pool"))
    running, waiting = SettledPort(), SettledPort()
    pipeline.receive(delivery("hold", {}, handler="GateHandler", reply_to=REPLY_TO), running)
    pipeline.receive(delivery("hold", {}, handler="GateHandler", reply_to=REPLY_TO), waiting)
    assert gate.started.wait(10)
    pipeline.stop()
    gate.gate.set()
    assert running.was_settled.wait(10) and waiting.was_settled.wait(10)
    assert (len(running.published), running.settled) == (1, [True])
    assert (waiting.published, waiting.settled) == ([], [False])
    late = CapturingPort()
    pipeline.receive(delivery("hold", {}, handler="GateHandler", reply_to=REPLY_TO), late)
    assert (late.published, late.settled) == ([], [False])
    pipeline.shutdown()


def test_an_inline_command_runs_on_the_receiving_thread_and_any_other_on_the_pool():
    threads: dict[str, str] = {}

    class Where(Middleware[None]):
        def before_execute(self, msg: InFlight) -> None:
            threads[msg.envelope.command] = threading.current_thread().name

    pipeline = Pipeline(HandlerRegistry([ProbeHandler()]), [Where()], executor=KeyedExecutor(1, name="kvt-pool"))
    inline, pooled = SettledPort(), SettledPort()
    pipeline.receive(delivery("hold", {"seconds": 0}), inline)
    assert inline.settled == [True], "an inline command is answered before receive returns"
    pipeline.receive(delivery("echo", {"text": "hi"}), pooled)
    assert pooled.was_settled.wait(10)
    pipeline.shutdown()
    assert threads == {"hold": threading.current_thread().name, "echo": "kvt-pool-0"}


def test_every_hook_runs_once_per_message_in_chain_order_and_a_refused_message_gets_after_reply_too():
    calls: list[tuple[str, str]] = []
    pipeline = Pipeline(HandlerRegistry([ProbeHandler()]), [Recorder("a", calls), Recorder("b", calls)])
    pipeline.handle(delivery("echo", {"text": "hi"}, message_id="m1"))
    assert calls == [("a", "on_receive"), ("b", "on_receive"), ("a", "before_execute"), ("b", "before_execute"),
                     ("a", "after_reply ['m1']"), ("b", "after_reply ['m1']")]  # fmt: skip
    calls.clear()
    pipeline.handle(Delivery(body=b"{not json", content_type="application/json", message_id="m2"))
    assert calls == [("a", "on_receive"), ("b", "on_receive"), ("a", "after_reply ['m2']"),
                     ("b", "after_reply ['m2']")]  # fmt: skip


def test_a_refusal_that_does_not_trust_the_sender_answers_nobody_runs_nothing_and_acks():
    class Refuser(Middleware[None]):
        def on_receive(self, msg: InFlight) -> Refusal:
            return Refusal(Reply.error(Code.UNAUTHENTICATED, "not signed"), answer_sender=False)

    port = CapturingPort()
    reply = Pipeline(HandlerRegistry([ProbeHandler()]), [Refuser()]).handle(
        delivery("unserialisable", {}, reply_to=REPLY_TO), port
    )
    assert reply.code == Code.UNAUTHENTICATED, "the command ran (its reply would be 99999)"
    assert (port.published, port.settled) == ([], [True])


def test_a_guard_that_cannot_decide_refuses_and_an_ordinary_failing_hook_is_logged_and_skipped(caplog):
    class Broken(Middleware[None]):
        def before_execute(self, msg: InFlight) -> None:
            raise RuntimeError("hook bug")

    class BrokenGuard(Broken):
        guard = True

    echo = delivery("echo", {"text": "hi"})
    with caplog.at_level(logging.ERROR, logger="kvmworker.dispatch"):
        assert Pipeline(HandlerRegistry([ProbeHandler()]), [Broken()]).handle(echo).code == 0
        assert Pipeline(HandlerRegistry([ProbeHandler()]), [BrokenGuard()]).handle(echo).code == Code.INTERNAL_ERROR
    assert caplog.text.count("Broken.before_execute failed") == 1
    assert caplog.text.count("BrokenGuard.before_execute failed") == 1
