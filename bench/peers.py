"""The floors: what a request/reply costs with nothing but the broker's own client library.

- py-amqp: a responder process that answers each message with a reply to its ``reply_to``, a caller that
  publishes and drains until its reply is in (one at a time), and a windowed caller that keeps 64 in flight.
- Redis: a responder process that ``BRPOP``s requests and ``LPUSH``es each reply to the caller's own list,
  and a caller that ``LPUSH``es a request and ``BRPOP``s its reply.

Each responder runs in a process of its own, as the worker does, so that caller and responder do not share a GIL.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid

import amqp
import redis

AMQP_RESPONDER = r"""
import sys, amqp
conn = amqp.Connection(sys.argv[1]); conn.connect(); ch = conn.channel()
ch.queue_declare(sys.argv[2], passive=sys.argv[3] == "existing", auto_delete=sys.argv[3] != "existing")
def on(msg):
    ch.basic_publish(amqp.Message(b'{"code":0,"msg":"ok","data":null}', correlation_id=msg.correlation_id),
                     exchange="", routing_key=msg.reply_to)
    ch.basic_ack(msg.delivery_tag)
ch.basic_qos(0, 128, False); ch.basic_consume(sys.argv[2], callback=on)
print("ready", flush=True)
while True:
    conn.drain_events()
"""

REDIS_RESPONDER = r"""
import sys, redis
r = redis.Redis.from_url(sys.argv[1]); r.ping()
print("ready", flush=True)
while True:
    found = r.brpop(sys.argv[2], timeout=1)  # redis-py's socket timeout (5 s) would end a longer wait
    if found is None:
        continue
    request = found[1]
    reply_to, _, body = request.partition(b" ")
    r.lpush(reply_to, b'{"code":0,"msg":"ok","data":null}')
"""

REQUEST = b'{"handler":"SystemHandler","command":"ping","data":{}}'


def responder(source: str, *args: str) -> subprocess.Popen:
    """A responder process, once it says it is ready."""
    proc = subprocess.Popen([sys.executable, "-c", source, *args], stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("a raw responder did not start")
    return proc


class AmqpPeer:
    """A py-amqp responder process on a fresh auto-delete queue, and a py-amqp caller for it."""

    def __init__(self, host_port: str):
        queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.process = responder(AMQP_RESPONDER, host_port, queue, "own")
        self.caller = AmqpCaller(host_port, queue)
        self.pid = self.process.pid

    def close(self) -> None:
        self.caller.close()
        self.process.kill()
        self.process.wait()


class RedisPeer:
    """A redis-py responder process on a fresh list, and a redis-py caller for it."""

    def __init__(self, url: str):
        queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.process = responder(REDIS_RESPONDER, url, queue)
        self.caller = RedisCaller(url, queue)
        self.pid = self.process.pid

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.caller.close()


class KombuRedisCaller:
    """A redis-py caller of a kvmworker worker: ``LPUSH`` of the message kombu's Redis channel would publish
    (built once, with a fresh message id, correlation id and delivery tag per call) to the worker's list, then
    ``BRPOP`` of the reply from a list of its own. What the worker adds, without the client's cost."""

    def __init__(self, url: str, queue: str, body: bytes = REQUEST):
        self.queue = queue
        self._redis = redis.Redis.from_url(url)
        self._reply_to = f"bench.reply.{uuid.uuid4().hex[:8]}"
        self._body = base64.b64encode(body).decode()

    def _message(self) -> str:
        ids = str(uuid.uuid4())
        properties = {"correlation_id": ids, "reply_to": self._reply_to, "delivery_mode": 2, "message_id": ids}
        properties |= {"delivery_info": {"exchange": "", "routing_key": self.queue}, "priority": 0}
        properties |= {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
        message = {"body": self._body, "content-encoding": "utf-8", "content-type": "application/json"}
        return json.dumps(message | {"headers": {}, "properties": properties})

    def latencies(self, calls: int) -> list[float]:
        samples = []
        for _ in range(calls):
            message = self._message()  # not timed: the caller's own cost
            started = time.perf_counter()
            self._redis.lpush(self.queue, message)
            if self._redis.brpop(self._reply_to, timeout=4) is None:  # under the socket timeout (5 s)
                raise RuntimeError("the worker did not answer within 4 s")
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        self._redis.delete(self._reply_to)
        self._redis.close()


class AmqpCaller:
    """A py-amqp caller on a connection of its own, with an exclusive reply queue."""

    def __init__(self, host_port: str, queue: str):
        self.queue = queue
        self._conn = amqp.Connection(host_port)
        self._conn.connect()
        self._ch = self._conn.channel()
        self._reply_q, _, _ = self._ch.queue_declare("", exclusive=True)
        self._answered: set[str] = set()
        self._ch.basic_consume(self._reply_q, callback=self._on_reply, no_ack=True)

    def _on_reply(self, message: amqp.Message) -> None:
        self._answered.add(message.correlation_id)

    def _send(self, body: bytes) -> str:
        cid = uuid.uuid4().hex
        props = {"correlation_id": cid, "reply_to": self._reply_q, "message_id": str(uuid.uuid4())}
        self._ch.basic_publish(amqp.Message(body, content_type="application/json", **props), "", self.queue)
        return cid

    def latencies(self, calls: int, body: bytes = REQUEST) -> list[float]:
        """One call at a time: publish, then drain until this call's reply is in."""
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            cid = self._send(body)
            while cid not in self._answered:
                self._conn.drain_events(timeout=10)
            self._answered.discard(cid)
            samples.append(time.perf_counter() - started)
        return samples

    def windowed(self, window: int, seconds: float, body: bytes = REQUEST) -> int:
        """Replies received in ``seconds`` with ``window`` requests always in flight."""
        in_flight: set[str] = set()
        done, stop_at = 0, time.monotonic() + seconds
        while time.monotonic() < stop_at:
            while len(in_flight) < window:
                in_flight.add(self._send(body))
            self._conn.drain_events(timeout=10)
            done += len(in_flight & self._answered)
            in_flight -= self._answered
            self._answered.clear()
        while in_flight:  # the stragglers, so that the next round starts from an empty queue
            self._conn.drain_events(timeout=10)
            in_flight -= self._answered
            self._answered.clear()
        return done

    def close(self) -> None:
        self._conn.close()


class RedisCaller:
    """A redis-py caller: ``LPUSH`` to the responder's list, ``BRPOP`` from a list of its own."""

    def __init__(self, url: str, queue: str):
        self.queue = queue
        self._redis = redis.Redis.from_url(url)
        self._reply_to = f"bench.reply.{uuid.uuid4().hex[:8]}".encode()

    def latencies(self, calls: int, body: bytes = REQUEST) -> list[float]:
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            self._redis.lpush(self.queue, self._reply_to + b" " + body)
            if self._redis.brpop(self._reply_to, timeout=4) is None:  # under the socket timeout (5 s)
                raise RuntimeError("the raw Redis responder did not answer within 4 s")
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        self._redis.delete(self.queue, self._reply_to)
        self._redis.close()
