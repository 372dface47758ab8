"""A real 3-node RabbitMQ cluster (quorum queues) that loses nodes under a worker, a client and a bridge.

The cluster is private (ports 5691-5693, nodes and data directories of its own), formed once for the module
and torn down at its end; each test starts with all three nodes running again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kombu import Connection, Consumer, Producer, Queue

from kvmworker.client import Client, PendingCall
from kvmworker.protocol.envelope import Reply
from kvmworker.transport.names import host_queue
from tests.faults.brokers import PrivateCluster, PrivateRabbit, private_cluster, require_private_brokers
from tests.support.processes import ROOT, WorkerProcess, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
FIRST_PORT = 5691  # tests/faults/* use 5682-5684; the cluster's Erlang distribution ports are 25691-25693


@pytest.fixture(scope="module")
def cluster_once(request: pytest.FixtureRequest) -> Iterator[PrivateCluster]:
    require_private_brokers()
    with private_cluster("kvtcl", FIRST_PORT) as cluster:
        yield cluster
    if FAULT_TABLE:  # the closing note's table: in the run's output (CI's log), and where KVT_FAULT_TABLE says
        table = "\n".join(["scenario | runs | commands | lost / twice / unanswered | time to resume", *FAULT_TABLE])
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\n{table}")
        if os.environ.get("KVT_FAULT_TABLE"):
            Path(os.environ["KVT_FAULT_TABLE"]).write_text(table + "\n")


@pytest.fixture
def cluster(cluster_once: PrivateCluster) -> PrivateCluster:
    cluster_once.all_up()
    return cluster_once


def test_plain_kombu_failover_after_a_failed_ack_reconnects_silently_to_a_connection_that_consumes_nothing(cluster):
    """The stall, in plain kombu: this is what the worker did before it tracked whether it consumes."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    queue = Queue(f"kvt-stall-{time.time_ns()}", durable=True)
    received = []
    with Connection(f"{cluster.url(a)};{cluster.url(b)}", heartbeat=30) as conn:
        consumer = Consumer(conn.channel(), queues=[queue], on_message=received.append)
        consumer.consume()
        Producer(conn.default_channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        conn.drain_events(timeout=5)
        a.kill()
        ack_errors = []
        for _ in range(2):  # the first write after the peer died succeeds; the RST makes the next one fail
            try:
                received[0].ack()  # as Worker._settle did: a failed ack was only logged
            except Exception as exc:
                ack_errors.append(exc)
            time.sleep(0.2)
        assert ack_errors, "acking on the dead node's channel never failed: the stall's first step did not happen"
        with Connection(cluster.url(b)) as other:  # a command that waits in the (replicated) queue
            Producer(other.default_channel).publish({"n": 2}, routing_key=queue.name, declare=[queue])
        stalled_for = 0.0
        while stalled_for < 5:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)  # kombu reconnects to b here, quietly: no channel, no consumer
            conn.heartbeat_check()
            stalled_for += 0.5
        assert conn.connected and f":{b.port}/" in conn.as_uri(), "kombu did not fail over to the next URL"
        assert [m.payload for m in received] == [{"n": 1}], "the command waiting in the queue was delivered"
        assert cluster.queue_depth(queue.name) >= 1
        queue.bind(conn.default_channel).delete()


# -- a worker, a client and a bridge on the cluster --------------------------------------------------------------

STREAM = int(os.environ.get("KVT_CLUSTER_STREAM", "500"))
KILL_RUNS = int(os.environ.get("KVT_CLUSTER_KILL_RUNS", "3"))
NAMES = 20  # resources the stream spreads over, so that commands run side by side and finish all the time
CALL_TIMEOUT = 60.0
RESUME_BOUND_S = 10.0
# Commands end on a 50 ms grid of the wall clock, so that many finish (and are acked) together; the kill lands
# just after a grid point, while the worker acks them: the moment at which a failed ack used to stall it.
ALIGN_S = 0.05
FAULT_TABLE: list[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Readiness:
    """The worker's ``/readyz``, sampled every 50 ms on a thread of its own: (monotonic time, ready?)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.samples: list[tuple[float, bool]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Readiness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                ready = httpx.get(self.url, timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            self.samples.append((time.monotonic(), ready))
            self._done.wait(0.05)

    def now(self) -> bool:
        return httpx.get(self.url, timeout=2).status_code == 200

    def down_and_up_after(self, t: float) -> tuple[float | None, float | None]:
        """When readiness first went false after ``t``, and when it was true again after that."""
        down = next((s for s, ok in self.samples if s >= t and not ok), None)
        up = next((s for s, ok in self.samples if down is not None and s > down and ok), None)
        return down, up


@dataclass
class Stream:
    """``count`` commands 5 ms apart (publisher confirms), with each reply's arrival time."""

    calls: list[tuple[str, PendingCall]] = field(default_factory=list)
    submitted: dict[str, float] = field(default_factory=dict)
    arrivals: dict[str, float] = field(default_factory=dict)

    def run(self, client: Client, host: str, n: int, at: int | None = None, fault: Callable[[], None] | None = None):
        for i in range(n):
            name = f"c{i % NAMES}"
            data = {"name": name, "align": ALIGN_S}
            pending = client.submit(host, {"handler": "ProbeHandler", "command": "count", "data": data})
            pending.future.add_done_callback(lambda _, m=pending.msg_id: self.arrivals.setdefault(m, time.monotonic()))
            self.calls.append((name, pending))
            self.submitted[pending.msg_id] = time.monotonic()
            if i == at and fault is not None:
                fault()
            time.sleep(0.005)

    def replies(self, client: Client, timeout: float = CALL_TIMEOUT) -> dict[str, tuple[str, Reply]]:
        """Every call's reply, or its -1, all within one ``timeout`` (not one timeout per call)."""
        deadline = time.monotonic() + timeout
        return {p.msg_id: (name, client.wait(p, max(deadline - time.monotonic(), 0))) for name, p in self.calls}

    def first_answer_sent_after(self, t: float) -> float:
        """How long after ``t`` the first command sent after ``t`` was answered."""
        after = [self.arrivals[m] - t for m, sent in self.submitted.items() if sent > t and m in self.arrivals]
        return min(after, default=float("inf"))

    def longest_silence_after(self, t: float) -> float:
        times = sorted(a for a in self.arrivals.values() if a >= t)
        return max((b - a for a, b in zip([t, *times], times, strict=False)), default=0.0)


def effects_by_msg_id(effects: Path) -> Counter[str]:
    return Counter(line for path in effects.glob("*.count") for line in path.read_text().split())


@pytest.fixture
def worker(cluster, tmp_path) -> Iterator[WorkerProcess]:
    """A worker whose failover list starts at node 0 (its queue's leader: it declares it first)."""
    port = free_port()
    w = WorkerProcess(cluster.urls(0), tmp_path, env={"KVMWORKER_HEALTH_PORT": str(port)})
    w.health_port = port
    w.start()
    assert wait_for(lambda: cluster.node_of_consumer(queue_of(w)) is not None, 20), w.log()
    yield w
    w.stop_all()
    with Connection(cluster.url(next(n for n in cluster.nodes if n.running()))) as conn:
        host_queue(w.host).bind(conn.default_channel).delete()


def queue_of(worker: WorkerProcess) -> str:
    return f"kvmworker.{worker.host}"


def consuming_on(cluster: PrivateCluster, worker: WorkerProcess) -> PrivateRabbit:
    """The node the worker says (in its log, as an operator reads it) it consumes on now."""
    line = [line for line in worker.log().splitlines() if "consuming kvmworker." in line][-1]
    return next(n for n in cluster.nodes if f":{n.port}/" in line)


def client_away_from(cluster: PrivateCluster, node: PrivateRabbit) -> Client:
    """A client whose failover list starts at another node than ``node``."""
    others = [i for i, n in enumerate(cluster.nodes) if n is not node]
    return Client(cluster.urls(*others))


def check_once_each(worker: WorkerProcess, replies: dict[str, tuple[str, Reply]]) -> tuple[int, int, int]:
    """(lost, executed twice, unanswered) over a stream's replies, from the worker's countable effects."""
    effects = effects_by_msg_id(worker.effects)
    unanswered = sum(1 for name, r in replies.values() if r.code != 0 or r.data != {"counted": name})
    return sum(1 for m in replies if effects[m] == 0), sum(1 for m in replies if effects[m] > 1), unanswered


def test_the_worker_s_node_killed_mid_stream_loses_nothing_runs_nothing_twice_and_consumption_resumes(
    cluster, worker, caplog
):
    queue = queue_of(worker)
    assert cluster.queue_type(queue) == "quorum"
    restart: threading.Thread | None = None
    with Readiness(worker.health_port) as readiness:
        for run in range(KILL_RUNS):
            if restart is not None:
                restart.join()
                cluster.all_up()
            victim = consuming_on(cluster, worker)
            assert readiness.now() and cluster.node_of_consumer(queue), f"run {run}: not consuming\n{worker.log()}"
            killed_at: list[float] = []

            def kill(victim=victim, killed_at=killed_at, offset=0.001 + 0.001 * run) -> None:
                time.sleep(ALIGN_S - time.time() % ALIGN_S + offset)
                killed_at.append(time.monotonic())
                os.kill(victim.os_pid, signal.SIGKILL)

            with client_away_from(cluster, victim) as client:
                stream = Stream()
                stream.run(client, worker.host, STREAM, at=STREAM // 3, fault=kill)
                replies = stream.replies(client)
            restart = threading.Thread(target=victim.start, daemon=True)
            restart.start()

            lost, twice, unanswered = check_once_each(worker, replies)
            down, up = readiness.down_and_up_after(killed_at[0])
            resumed = (up - killed_at[0]) if up else float("inf")
            silence = stream.longest_silence_after(killed_at[0])
            FAULT_TABLE.append(
                f"kill -9 worker's node | run {run + 1} | {STREAM} | {lost} / {twice} / {unanswered} | "
                f"ready again {resumed:.1f} s, longest reply gap {silence:.1f} s, first command sent after the kill "
                f"answered after {stream.first_answer_sent_after(killed_at[0]):.1f} s; client publishes nacked and "
                f"sent again: {caplog.text.count('nacked the publish')}"
            )
            caplog.clear()
            assert (lost, twice, unanswered) == (0, 0, 0), f"run {run}: lost/twice/unanswered\n{worker.log()}"
            assert down is not None, f"run {run}: /readyz never said not ready after the worker's node died"
            assert resumed <= RESUME_BOUND_S, f"run {run}: consumption resumed after {resumed:.1f} s"
            assert silence <= RESUME_BOUND_S, f"run {run}: no reply for {silence:.1f} s"
            assert readiness.now() and consuming_on(cluster, worker) is not victim, worker.log()
        restart.join()
    assert cluster.queue_depth(queue) == 0
    assert worker.current.poll() is None, "the worker died"
    assert "kvt-cluster-secret" not in worker.log(), "a broker password reached the log"


def test_acks_failing_on_the_dead_node_make_the_worker_consume_again_instead_of_stalling_silently(cluster, worker):
    """The stall, made certain: the consumer thread is held by an inline command while the node dies, then acks
    several finished commands before it reads anything. The first ack's write draws a reset, the next fails;
    the worker used to log that and let kombu reconnect underneath it, to a connection without a consumer."""
    queue = queue_of(worker)
    victim = consuming_on(cluster, worker)
    with Readiness(worker.health_port) as readiness, client_away_from(cluster, victim) as client:
        before = Stream()
        for i in range(6):  # on the pool; they finish (reply published, ack queued) while the consumer is held
            data = {"name": f"s{i}", "sleep": 0.3}
            pending = client.submit(worker.host, {"handler": "ProbeHandler", "command": "count", "data": data})
            before.calls.append((f"s{i}", pending))
        assert wait_for(lambda: all(effects_by_msg_id(worker.effects)[p.msg_id] for _, p in before.calls), 10)
        hold = client.submit(worker.host, {"handler": "ProbeHandler", "command": "hold", "data": {"seconds": 2}})
        time.sleep(1)  # the counts have finished; the consumer thread is inside ``hold``
        killed_at = time.monotonic()
        victim.kill()
        after = Stream()
        after.run(client, worker.host, 50)
        replies = {**before.replies(client), **after.replies(client)}
        assert client.wait(hold, 20).code == 0
    lost, twice, unanswered = check_once_each(worker, replies)
    down, up = readiness.down_and_up_after(killed_at)
    resumed = (up - killed_at) if up else float("inf")
    FAULT_TABLE.append(
        f"acks on the dead node after an inline hold | 1 | {len(replies)} | {lost} / {twice} / {unanswered} | "
        f"ready again {resumed:.1f} s, first command sent after the kill answered after "
        f"{after.first_answer_sent_after(killed_at):.1f} s"
    )
    assert (lost, twice, unanswered) == (0, 0, 0), worker.log()
    assert down is not None and resumed <= RESUME_BOUND_S, f"resumed after {resumed:.1f} s\n{worker.log()}"
    assert readiness.now() and cluster.node_of_consumer(queue), worker.log()


def test_a_graceful_stop_app_of_the_worker_s_node_and_its_rejoining_lose_nothing(cluster, worker):
    queue = queue_of(worker)
    victim = consuming_on(cluster, worker)
    with Readiness(worker.health_port) as readiness, client_away_from(cluster, victim) as client:
        stopped_at: list[float] = []  # when stop_app was asked for, when it had closed the node's port

        def stop_app() -> None:
            stopped_at.append(time.monotonic())
            threading.Thread(
                target=lambda: (victim.stop_app(), stopped_at.append(time.monotonic())), daemon=True
            ).start()

        stream = Stream()
        stream.run(client, worker.host, STREAM, at=10, fault=stop_app)  # rabbitmqctl takes a second or two to act
        replies = stream.replies(client)
        assert len(stopped_at) == 2 and stopped_at[1] < max(stream.submitted.values()), "stop_app after the stream"
        lost, twice, unanswered = check_once_each(worker, replies)
        down, up = readiness.down_and_up_after(stopped_at[0])
        resumed = (up - down) if up and down else float("inf")
        FAULT_TABLE.append(
            f"stop_app of worker's node | 1 | {STREAM} | {lost} / {twice} / {unanswered} | "
            f"not ready for {resumed:.1f} s, longest reply gap {stream.longest_silence_after(stopped_at[0]):.1f} s"
        )
        assert (lost, twice, unanswered) == (0, 0, 0), worker.log()
        assert down is not None and resumed <= RESUME_BOUND_S, f"resumed after {resumed:.1f} s"

        # The node rejoins: a client that knows only that node reaches the worker through it.
        victim.start_app()
        cluster.all_up()
    with Client(cluster.url(victim)) as alone:
        rejoined = Stream()
        rejoined.run(alone, worker.host, 50)
        replies = rejoined.replies(alone)
    lost, twice, unanswered = check_once_each(worker, replies)
    FAULT_TABLE.append(f"through the rejoined node | 1 | 50 | {lost} / {twice} / {unanswered} | -")
    assert (lost, twice, unanswered) == (0, 0, 0), worker.log()
    # A command is acked once its reply's confirm is back, which may come after the reply reached the client
    # (and a quorum queue's count follows the ack through Raft): nothing may stay, but not to the millisecond.
    assert wait_for(lambda: cluster.queue_depth(queue) == 0, 10), f"left in {queue}\n{worker.log()}"


def test_the_client_s_and_the_bridge_s_own_node_dying_leaves_no_command_without_a_definite_outcome(
    cluster, worker, tmp_path
):
    worker_node = consuming_on(cluster, worker)
    victim = next(n for n in cluster.nodes if n is not worker_node)
    urls = cluster.urls(cluster.nodes.index(victim))  # the client and the bridge start on the victim
    port, token = free_port(), tmp_path / "token"
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvmworker",
            "bridge",
            "--broker",
            urls,
            "--port",
            str(port),
            "--token-file",
            str(token),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "bridge.log").open("w"),  # a file, not a pipe nobody reads while it logs every POST
        text=True,
        env=os.environ | {"KVMWORKER_DEFAULT_HOST": worker.host},
    )
    posts: list[tuple[float, int]] = []  # (time sent, reply code)
    stop_posting = threading.Event()
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.monotonic())
        os.kill(victim.os_pid, signal.SIGKILL)

    def post_all_along() -> None:
        auth = {"Authorization": f"Bearer {token.read_text().strip()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth) as http:
            while not stop_posting.is_set():
                body = {"handler": "SystemHandler", "command": "ping", "data": {}, "timeout": 5}
                sent = time.monotonic()
                try:
                    posts.append((sent, http.post("/", json=body).json()["code"]))
                except httpx.HTTPError:
                    posts.append((sent, -999))
                time.sleep(0.05)

    try:
        assert wait_for(lambda: _answers(port), 30), "the bridge did not come up"
        poster = threading.Thread(target=post_all_along, daemon=True)
        poster.start()
        with Client(urls) as client:
            stream = Stream()
            stream.run(client, worker.host, STREAM // 2, at=STREAM // 6, fault=kill)
            replies = stream.replies(client, 20)
            # A -1 is settled the documented way: SystemHandler.result with its msg_id, once the client is back.
            assert wait_for(lambda: client.ready, 15)
            unknown = [m for m, (_, r) in replies.items() if r.code != 0]
            outcomes = {
                m: client.call(worker.host, "SystemHandler", "result", {"msg_id": m}, timeout=15) for m in unknown
            }
            after = client.call(worker.host, "ProbeHandler", "echo", {"text": "after"}, timeout=15)
        time.sleep(2)
        stop_posting.set()
        poster.join(40)
    finally:
        bridge.terminate()
        bridge.wait(20)
        bridge_log = (tmp_path / "bridge.log").read_text()

    effects = effects_by_msg_id(worker.effects)
    twice = sum(1 for m in replies if effects[m] > 1)
    never_seen = {m for m, r in outcomes.items() if r.code == -1 and r.data.get("state") == "never_seen"}
    undecided = {m for m, r in outcomes.items() if m not in never_seen and r.code != 0}
    answered = sum(1 for _, r in replies.values() if r.code == 0)
    assert after.code == 0, "the client does not work after its node died"
    assert twice == 0 and undecided == set(), (twice, {m: outcomes[m].data for m in undecided})
    assert all(effects[m] == 1 for m, (_, r) in replies.items() if r.code == 0)
    assert all(effects[m] == 0 for m in never_seen), "a command the worker never saw took effect"
    lost = sum(1 for m, (_, r) in replies.items() if r.code == 0 and effects[m] != 1)
    late = [(t, c) for t, c in posts if t > killed_at[0] + RESUME_BOUND_S]
    bridge_resumed = next((t - killed_at[0] for t, c in posts if t > killed_at[0] and c == 0), float("inf"))
    FAULT_TABLE.append(
        f"client's own node killed | 1 | {STREAM // 2} | {lost} / {twice} / {STREAM // 2 - answered} "
        f"(-1 settled by result: {len(outcomes) - len(never_seen)}, never reached the queue: {len(never_seen)}) | "
        f"first command sent after the kill answered after {stream.first_answer_sent_after(killed_at[0]):.1f} s"
    )
    FAULT_TABLE.append(
        f"bridge's own node killed | 1 | {len(posts)} POSTs | - / - / {sum(1 for _, c in posts if c != 0)} | "
        f"first POST answered {bridge_resumed:.1f} s after the kill"
    )
    assert late and all(c == 0 for _, c in late), f"the bridge did not answer again: {late[-5:]}\n{bridge_log}"
    assert all(c in (0, -1) for _, c in posts), f"the bridge failed a POST otherwise than -1: {posts}"
    # over plain AMQP the bridge forwards on its loop lane (no client): the lane is what must have lost its node
    assert "the bridge lost its broker connection" in bridge_log, "the bridge never lost its node: wrong victim"
    assert "kvt-cluster-secret" not in bridge_log, "a broker password reached the bridge's log"


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
