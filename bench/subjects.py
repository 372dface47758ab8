"""kvmworker as it runs in production: a ``kvmworker worker`` process with its own state directory, called
through ``kvmworker.client.Client`` from this process.

Only ``Client(url, confirms=…, persistent=…)`` and ``Client.call`` are used, so that the same bench runs
against older and newer checkouts (``compare.py``). Processes start in a scratch directory: ``python -m``
puts the working directory first on ``sys.path``, and a checkout there would shadow the one under test.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import amqp
import redis
from kombu import Connection
from peers import AMQP_RESPONDER, AmqpCaller, KombuRedisCaller, responder

from kvmworker.client import Client

PING = ("SystemHandler", "ping")

try:
    from kvmworker.transport.names import host_queue_name
except ImportError:  # where a later layout keeps the wire names

    def host_queue_name(host: str) -> str:
        from kvmworker.protocol.wire import QUEUE_PREFIX

        return QUEUE_PREFIX + host


def new_host() -> str:
    # not ``kvt…``: a test session, when it ends, deletes every ``kvmworker.kvt…`` queue, this run's too
    return f"bench-{uuid.uuid4().hex[:8]}"


def delete_queue(url: str, host: str) -> None:
    """The host's durable queue, and whatever still waits in it."""
    with Connection(url) as conn:
        conn.default_channel.queue_delete(host_queue_name(host))


def kvmworker_process(argv: list[str], scratch: Path, log_name: str, **popen) -> subprocess.Popen:
    """``python -m kvmworker ARGV`` with its stderr in ``scratch/log_name``."""
    log = (scratch / log_name).open("ab")
    cmd = [sys.executable, "-m", "kvmworker", *argv]
    return subprocess.Popen(cmd, cwd=scratch, stderr=log, **popen)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class KvmSubject:
    """A worker process for a fresh host, and a client for it in this process."""

    def __init__(self, url: str, *, confirms: bool = True, persistent: bool = True, worker_args: tuple = ()):
        self.url, self.host = url, new_host()
        self._scratch = tempfile.TemporaryDirectory(prefix="kvt-bench-")
        scratch = Path(self._scratch.name)
        argv = ["worker", "--host", self.host, "--broker", url, "--state-dir", str(scratch / "state")]
        argv += ["--log-level", "WARNING", *([] if confirms else ["--no-publish-confirms"]), *worker_args]
        self.process = kvmworker_process(argv, scratch, "worker.log")
        self.client = Client(url, confirms=confirms, persistent=persistent)
        try:
            self._warm_up()
        except BaseException:
            self.close()  # nobody else holds it yet
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _warm_up(self) -> None:
        """The first call waits in the host's queue until the worker consumes; then a few hundred more."""
        if self.client.call(self.host, *PING, timeout=30).code != 0:
            log = Path(self._scratch.name, "worker.log").read_text()[-2000:]
            raise RuntimeError(f"the worker for {self.host} did not answer; its log ends:\n{log}")
        self.latencies(200)

    def call(self) -> int:
        reply = self.client.call(self.host, *PING, timeout=10)
        if reply.code != 0:
            raise RuntimeError(f"ping answered {reply.code}: {reply.msg} {reply.data}")
        return 0

    def latencies(self, calls: int) -> list[float]:
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            self.call()
            samples.append(time.perf_counter() - started)
        return samples

    def throughput(self, callers: int, seconds: float) -> int:
        """Calls answered in ``seconds`` by ``callers`` threads sharing the one client."""
        return threaded_calls(self.call, callers, seconds)

    def close(self) -> None:
        self.client.close()
        stop(self.process)
        delete_queue(self.url, self.host)
        self._scratch.cleanup()


class RawCallerToWorker:
    """What the worker adds: a py-amqp caller sending the ping envelope straight to a worker's queue."""

    def __init__(self, worker: KvmSubject, host_port: str):
        self.pid = worker.pid
        self.caller = AmqpCaller(host_port, host_queue_name(worker.host))
        self.caller.latencies(200)

    def close(self) -> None:
        self.caller.close()


class RawRedisCallerToWorker:
    """What the worker adds on Redis: a redis-py caller pushing kombu's message straight onto a worker's list."""

    def __init__(self, worker: KvmSubject, url: str):
        self.pid = worker.pid
        self.caller = KombuRedisCaller(url, host_queue_name(worker.host))
        self.caller.latencies(200)

    def close(self) -> None:
        self.caller.close()


# The worker's guarantees with nothing else: the reply persistent, published on a second channel of the consuming
# connection in confirm mode, and the request acked only once the broker has confirmed its reply (by delivery tag,
# read in the same drain loop, never waiting on one confirm at a time).
AMQP_CONFIRM_RESPONDER = r"""
import sys, amqp
conn = amqp.Connection(sys.argv[1]); conn.connect(); ch = conn.channel(); out = conn.channel()
ch.queue_declare(sys.argv[2], durable=True, auto_delete=True)
out.confirm_select()
waiting = {}  # reply's publish tag -> request's delivery tag
sent = [0]
def on(msg):
    sent[0] += 1
    waiting[sent[0]] = msg.delivery_tag
    out.basic_publish(amqp.Message(b'{"code":0,"msg":"ok","data":null}', correlation_id=msg.correlation_id,
                                   delivery_mode=2), exchange="", routing_key=msg.reply_to)
def on_ack(tag, multiple):
    for t in ([t for t in waiting if t <= tag] if multiple else [tag]):
        ch.basic_ack(waiting.pop(t))
out.events["basic_ack"].add(on_ack)
ch.basic_qos(0, 128, False); ch.basic_consume(sys.argv[2], callback=on)
print("ready", flush=True)
while True:
    conn.drain_events()
"""


class PersistentCaller(AmqpCaller):
    """The raw caller, its requests persistent (as the client's are by default) to a durable queue."""

    def _send(self, body: bytes) -> str:
        cid = uuid.uuid4().hex
        props = {"correlation_id": cid, "reply_to": self._reply_q, "message_id": str(uuid.uuid4())}
        message = amqp.Message(body, content_type="application/json", delivery_mode=2, **props)
        self._ch.basic_publish(message, "", self.queue)
        return cid


class ConfirmingCaller(PersistentCaller):
    """The persistent raw caller on a channel in confirm mode, as the client's is by default: the broker confirms
    each request, and the caller reads that ``basic.ack`` as it comes, in the same drain as its reply, but never
    awaits it (py-amqp awaits a publish's confirm only on a connection opened with ``confirm_publish=True``, which
    this one is not). Exactly what the client does: it returns on the reply and matches the confirm later."""

    def __init__(self, host_port: str, queue: str):
        super().__init__(host_port, queue)
        self._ch.confirm_select()


class AmqpConfirmPeer:
    """The floor for the worker's guarantees: a py-amqp responder that publishes its reply persistent with
    confirms on and acks the request only after that confirm; a raw caller sending persistent requests (and,
    ``confirmed``, on a confirm-mode channel whose confirms it reads as they come without awaiting them, as the
    client does: every guarantee of the default path, nothing else)."""

    def __init__(self, host_port: str, confirmed: bool = False):
        queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.process = responder(AMQP_CONFIRM_RESPONDER, host_port, queue)
        self.caller = (ConfirmingCaller if confirmed else PersistentCaller)(host_port, queue)
        self.pid = self.process.pid

    def close(self) -> None:
        self.caller.close()
        self.process.kill()
        self.process.wait()


# The worker's Redis guarantees with nothing else: a message recorded in kombu's unacked bookkeeping the moment it
# is popped (a script: RPOP, then kombu's ZADD + HSET of [message, exchange, queue]), waited for with a BLMOVE of
# the list onto itself in front of it (in the same write); then the reply's LPUSH and the ack (ZREM + HDEL) in one
# MULTI/EXEC, written together with the next wait and take. The message is kombu's (its JSON read for reply_to).
REDIS_GUARANTEES_RESPONDER = r"""
import json, sys, redis
TAKE = "\n".join((
    "local m = redis.call('RPOP', KEYS[1])",
    "if not m then return false end",
    "local t = redis.call('TIME')",
    "redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])",
    "redis.call('HSET', KEYS[3], ARGV[1], '[' .. m .. ',\"\",' .. ARGV[2] .. ']')",
    "return m",
))
r = redis.Redis.from_url(sys.argv[1]); queue = sys.argv[2]
index, table = queue + ".unacked_index", queue + ".unacked"
sha = r.script_load(TAKE)
reply = b'{"code":0,"msg":"ok","data":null}'
print("ready", flush=True)
count, settle = 0, None
while True:
    pipe = r.pipeline(transaction=False)
    if settle is not None:
        reply_to, tag = settle
        pipe.execute_command("MULTI")
        pipe.lpush(reply_to, reply)
        pipe.zrem(index, tag)
        pipe.hdel(table, tag)
        pipe.execute_command("EXEC")
    count += 1
    tag = "t%d" % count
    pipe.blmove(queue, queue, 1, "RIGHT", "RIGHT")  # waits, takes nothing (redis-py's socket timeout is 5 s)
    pipe.evalsha(sha, 3, queue, index, table, tag, json.dumps(queue))
    message = pipe.execute()[-1]
    settle = None if message is None else (json.loads(message)["properties"]["reply_to"], tag)
"""


class RedisGuaranteesPeer:
    """The floor for the worker's Redis guarantees (``REDIS_GUARANTEES_RESPONDER``), and a redis-py caller
    sending kombu's message (LPUSH, then BRPOP of its reply)."""

    def __init__(self, url: str):
        queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self._redis = redis.Redis.from_url(url)
        self._keys = (queue, queue + ".unacked_index", queue + ".unacked")
        self.process = responder(REDIS_GUARANTEES_RESPONDER, url, queue)
        self.caller = KombuRedisCaller(url, queue)
        self.pid = self.process.pid

    def close(self) -> None:
        self.caller.close()
        self.process.kill()
        self.process.wait()
        self._redis.delete(*self._keys)
        self._redis.close()


class ClientToRaw:
    """What the client adds: the kvmworker client (defaults) against a py-amqp responder on a host's queue."""

    def __init__(self, url: str, host_port: str):
        self.url, self.host = url, new_host()
        self.client = Client(url)
        self.client.call(self.host, *PING, timeout=0.2)  # declares the host's queue; nobody answers yet
        self.process = responder(AMQP_RESPONDER, host_port, host_queue_name(self.host), "existing")
        self.pid = self.process.pid
        self.latencies(200)

    call = KvmSubject.call
    latencies = KvmSubject.latencies

    def close(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait()
        delete_queue(self.url, self.host)


def threaded_calls(call, callers: int, seconds: float) -> int:
    """Answered calls of ``callers`` threads looping ``call()`` for ``seconds``; any failed call fails the row."""
    counts, failures = [0] * callers, []
    start = threading.Barrier(callers + 1)

    def loop(index: int) -> None:
        start.wait()
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            try:
                call()
            except Exception as exc:
                failures.append(exc)
                return
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} callers failed, e.g. {failures[0]}")
    return sum(counts)
