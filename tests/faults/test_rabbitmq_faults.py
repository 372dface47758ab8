"""Faults on a private RabbitMQ node: a restart in a burst, a vanished reply queue, a worker SIGKILLed mid-command.

Every test checks observable outcomes only: each caller gets its own reply or -1 (never another's), no command
takes effect twice, none is lost (each published command ends with a definite recorded outcome), and after
SIGKILLs the state is what the commands should have produced once callers re-send what came back -1.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from tests.faults.brokers import PrivateRabbit, private_rabbit, require_private_brokers
from tests.faults.handlers import runs_of
from tests.support.processes import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
BURST = int(os.environ.get("KVT_FAULT_BURST", "1000"))
NAMES = 20  # resources the burst spreads over, so that commands run side by side
CALL_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    require_private_brokers()
    with private_rabbit("kvt-faults", 5682) as node:
        yield node


def effects_by_msg_id(effects: Path) -> Counter[str]:
    return Counter(line for path in effects.glob("*.count") for line in path.read_text().split())


def _never_confirmed(detail: str) -> bool:
    """The client's -1 for a command the broker never confirmed taking (or never was asked to take)."""
    return "did not confirm" in detail or "could not be reached" in detail


def test_a_broker_restart_during_a_burst_of_commands_loses_none_runs_none_twice_and_never_answers_wrongly(
    rabbit, worker
):
    restarted = threading.Event()
    submitted = [0]
    straddled: list[int] = []

    def restart() -> None:
        rabbit.restart()
        straddled.append(submitted[0])  # how far the burst had got when the broker was back
        restarted.set()

    with Client(rabbit.url) as client:
        calls = []
        for i in range(BURST):
            body = {"handler": "ProbeHandler", "command": "count", "data": {"name": f"b{i % NAMES}"}}
            calls.append((f"b{i % NAMES}", client.submit(worker.host, body, timeout=CALL_TIMEOUT)))
            submitted[0] = i + 1
            if i == BURST // 5:
                threading.Thread(target=restart, daemon=True).start()
            # A burst that outlasts the broker's going down: submit returns at once (the publisher's thread
            # waits for the broker), so from half-way on the burst slows down until the broker is back.
            time.sleep(0.004 if i < BURST // 2 or restarted.is_set() else 0.05)
        # one deadline for all (a reply sent while the client's reply queue was gone with the broker never comes)
        deadline = time.monotonic() + CALL_TIMEOUT
        replies = {p.msg_id: (name, client.wait(p, max(deadline - time.monotonic(), 0))) for name, p in calls}
        assert restarted.wait(60), "the broker did not come back"
        assert straddled[0] < BURST, "the burst ended before the broker came back: no restart during the burst"

        wrong = [(n, r) for n, r in replies.values() if r.code == 0 and r.data != {"counted": n}]
        assert wrong == [], "a caller got a reply that was not its own"
        assert {r.code for _, r in replies.values()} <= {0, -1}

        # Once the queue is drained, every published command has a definite recorded outcome.
        assert wait_for(lambda: rabbit.queue_depth(f"kvmworker.{worker.host}") == 0, 60)
        unknown = [m for m, (_, r) in replies.items() if r.code == -1]
        outcomes = {m: client.call(worker.host, "SystemHandler", "result", {"msg_id": m}, timeout=20) for m in unknown}
        # A publish whose confirm was lost may or may not have reached the queue: "never seen" is a
        # definite outcome for those, and only for those.
        unconfirmed = {m for m in unknown if _never_confirmed(replies[m][1].data["detail"])}
        never_seen = {m for m, r in outcomes.items() if r.code == -1 and r.data.get("state") == "never_seen"}
        assert never_seen <= unconfirmed, "a command the broker confirmed was never seen by the worker"
        outcomes = {m: r for m, r in outcomes.items() if m not in never_seen}

    effects = effects_by_msg_id(worker.effects)
    twice = {m: n for m, n in effects.items() if n > 1}
    assert twice == {}, "a command took effect twice"
    answered = [m for m, (_, r) in replies.items() if r.code == 0]
    assert all(effects[m] == 1 for m in answered), "a command answered 0 has no effect"
    assert all(effects[m] == 0 for m in never_seen), "a command the worker never saw took effect"
    lost = {m: r.data for m, r in outcomes.items() if r.code == -1}
    assert lost == {}, "a published command has no recorded outcome"
    assert all(effects[m] == (r.code == 0) for m, r in outcomes.items()), "a recorded outcome contradicts the effects"
    print(
        f"\nburst {BURST}: answered {len(answered)}, -1 {BURST - len(answered)} "
        f"(resolved later: {len(outcomes)}, never reached the worker: {len(never_seen)}), "
        f"executed twice: {len(twice)}, "
        f"broker back after {straddled[0]} submissions"
    )


def test_a_reply_queue_gone_before_the_reply_is_answered_into_the_void_once_and_the_worker_serves_on(rabbit, worker):
    body = {"handler": "ProbeHandler", "command": "count", "data": {"name": "gone", "sleep": 2}}
    doomed = Client(rabbit.url)
    pending = doomed.submit(worker.host, body, timeout=30)
    assert wait_for(lambda: effects_by_msg_id(worker.effects)[pending.msg_id] == 1, 10)
    doomed.close()  # its exclusive reply queue goes with its connection, while the command still runs

    with Client(rabbit.url) as client:
        result = lambda: client.call(worker.host, "SystemHandler", "result", {"msg_id": pending.msg_id}, timeout=10)  # noqa: E731
        assert wait_for(lambda: result().code == 0, 15, interval=0.5), worker.log()
        time.sleep(2)
        assert effects_by_msg_id(worker.effects)[pending.msg_id] == 1, "the command ran again"
        assert rabbit.queue_depth(f"kvmworker.{worker.host}") == 0
        assert client.call(worker.host, "SystemHandler", "ping", timeout=10).code == Code.OK
    assert worker.current.poll() is None, "the worker died"


def test_a_worker_sigkilled_mid_command_converges_once_callers_resend_what_came_back_minus_one(rabbit, worker):
    keys = [f"k{i}" for i in range(8)]

    def put(client: Client, key: str):
        data = {"key": key, "value": f"value-of-{key}", "sleep": 1.5}
        return client.submit(worker.host, {"handler": "StateHandler", "command": "put", "data": data}, timeout=60)

    with Client(rabbit.url) as client:
        first = {key: put(client, key) for key in keys}
        # SIGKILL while every command sits between its two steps (temporary file written, not yet renamed)
        assert wait_for(lambda: all(runs_of(worker.effects, k) for k in keys), 15)
        worker.kill()
        worker.start()
        replies = {key: client.wait(p, 60) for key, p in first.items()}
        assert {r.code for r in replies.values()} <= {0, -1}
        # The documented way to settle a -1: check, then send again with a new msg_id.
        resent = {key: client.wait(put(client, key), 60) for key, r in replies.items() if r.code != 0}
        assert all(r.code == 0 for r in resent.values()), resent

    state = {key: (worker.effects / key).read_text() for key in keys}
    assert state == {key: f"value-of-{key}" for key in keys}
    assert list(worker.effects.glob(".*.tmp")) == [], "a half-done step was left behind"
    runs = Counter(m for k in keys for m in runs_of(worker.effects, k))
    assert max(runs.values()) <= 3, "a msg_id ran more often than a bounded number of attempts"
    print(f"\nsigkill: {len(keys)} commands, {len(resent)} -1 re-sent, runs per msg_id {Counter(runs.values())}")
