"""The worker's Redis session (see ``transport/worker.py``): its own take (a message popped and recorded in one
script), kombu's unacked bookkeeping, and the reply with its ack in one write."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import select
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu import Connection

from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.port import Done, Outgoing
from kvmworker.protocol.codec import JSON_CONTENT_TYPE
from kvmworker.transport.connection import ConnectionLost
from kvmworker.transport.resp import Incomplete, RedisError, bulk, kombu_message, lpush, pack, read_answer
from kvmworker.transport.session import IDLE_WAIT_S, RECV_CHUNK, Port, reply_properties

if TYPE_CHECKING:
    from kvmworker.transport.worker import Worker

log = logging.getLogger("kvmworker.worker")

# Redis: the worker reads the answers to its bookkeeping and replies once this many are owed (about 20 messages)
UNREAD_MAX = 200
# Redis: a take pops at most this many messages (within the prefetch): one round trip for a backlog's worth
TAKE_MAX = 16
# Redis: kombu's restore of what was left unacked past the visibility timeout runs this often (a quarter of the
# timeout, within these bounds), busy or idle; kombu's own consumer ran it on every tenth empty poll
RESTORE_MIN_S, RESTORE_MAX_S = 0.5, 10.0


class RedisSession:
    """Redis: the host queue read by the session itself; kombu's unacked bookkeeping, the replies and the acks
    written by the session itself; used by the consumer thread alone.

    kombu's channel keeps its part: it declares the queue and its binding (what a kombu orchestrator's publish
    looks up); its QoS holds the deliveries not yet settled, so that when the channel closes (a lost connection,
    the end) kombu restores them from their records at once; its ``restore_visible`` hands out again whatever
    any worker left unsettled for longer than the visibility timeout (here on a timer, ``_restore_every``, busy
    or idle). What is not kombu's: the reading and writing (kombu's poller, its Message objects, its redis-py
    client and its transaction waited for per delivery cost more than the rest of the path).

    One connection (``_sock``, set up by redis-py, then written and read here) carries the take and, in front
    of it, what the worker writes. The take: ``TAKE`` (``_TAKE``, a script) pops the first messages of the
    queue's lists (up to ``TAKE_MAX``, within the prefetch) and writes each one's record (kombu's ZADD + HSET,
    in kombu's keys and format, restored by kombu to this queue) in one step in Redis; when nothing is left,
    a ``BLMOVE`` of the default priority's list onto itself (it takes nothing) waits in front of it, in the
    same write. So a message is recorded the moment it is popped, with no round trip of the worker's in
    between: a worker killed (or frozen) at any point has it back after the visibility timeout, once (kombu's
    restore moves the record back to the queue and deletes it, in one transaction that watches it). A message
    with a kombu priority (its own list) that comes while the worker waits is taken when the wait times out
    (``brpop_timeout``, 1 s). Without scripts or BLMOVE (an ACL, Redis < 6.2) the take is a BRPOP and the
    record is written by the worker before the message is handed over, as kombu does (a process killed between
    the two loses it, as with kombu's consumer). Then the reply and the ack go in one MULTI/EXEC, with the next
    take in the same write: an inline command costs one write and the read of its answers, read when they come,
    in order, in front of the take's. While a take waits, a reply from the pool goes out on the ``RedisBook``'s
    connection, once the answers owed on this one are read: then every record it acks is in. The loop waits on
    this socket and the inbox's wake-up pipe together: no polling.

    Stopping (``cancel``) cuts the wait short and reads the take's answer, so that nothing popped is dropped.
    """

    def __init__(self, worker: Worker, conn: Connection, channel: Any):
        from kombu.transport.virtual import QoS
        from kombu.utils.json import dumps as json_dumps
        from redis.exceptions import ResponseError

        self._worker = worker
        self.alive = True
        self._channel = channel
        self._json = json_dumps
        self._base64 = channel.body_encoding == "base64" and not channel.default_priority  # kombu's defaults
        # the replies' delivery tags: kombu's are uuid4s; these look the same (random, then a count: unique
        # without a uuid4 per reply)
        self._tag_base, self._tags = str(uuid.uuid4())[:24], itertools.count()
        queue = worker._queue
        queue.bind(channel).declare()
        channel.basic_qos(0, worker._prefetch, False)  # kombu's in-memory accounting, as for kombu's consumer
        self._qos = qos = channel.qos
        self._remember, self._forget = QoS.append, QoS.ack  # the in-memory part of kombu's bookkeeping
        prefix = channel.global_keyprefix or ""  # what kombu's prefixing client adds to every key
        self._prefix = prefix
        self._index, self._table = prefix + qos.unacked_index_key, prefix + qos.unacked_key
        keys = [prefix + channel._q_for_pri(queue.name, pri) for pri in channel.priority_steps]  # kombu's keys
        wait = channel.brpop_timeout or 1
        # a live Redis answers a take within its timeout: one unanswered this much longer is a dead connection
        # (a half-open socket never becomes readable), as kombu's poller judges it
        self._overdue_s = wait + (channel.health_check_interval or 25)
        self._restore_every = min(RESTORE_MAX_S, max(channel.visibility_timeout / 4, RESTORE_MIN_S))
        self._restore_limit = channel.unacked_restore_limit
        self._book = RedisBook(channel)  # the second connection: replies while a take waits
        self._pool = channel.pool
        self._conn = self._pool.get_connection()  # connected, authenticated, its database selected
        self._conn.send_command("CLIENT", "ID")
        try:
            self._client_id: int | None = self._conn.read_response()
        except ResponseError:  # refused (ACL): a stop waits for the BRPOP's timeout instead
            self._client_id = None
        self._take = self._takes(keys, wait)
        self._sock = self._conn._sock  # from here on written and read here alone
        self._tls = hasattr(self._sock, "pending")
        self._rbuf = bytearray()  # what was read past the last whole answer
        # what ``_read_owed`` read past the answers owed (the take's, maybe): not seen by select
        self._unparsed = False
        self._owed = 0  # answers Redis owes in front of the take's
        self._out: list[bytes] = []  # commands written at the end of the pass (in RESP), and how many
        self._out_count = 0
        # what every record and ack repeats, packed once
        self._zadd = b"".join((b"*4\r\n", bulk(b"ZADD"), bulk(self._index.encode())))
        self._hset = b"".join((b"*4\r\n", bulk(b"HSET"), bulk(self._table.encode())))
        self._zrem = b"".join((b"*3\r\n", bulk(b"ZREM"), bulk(self._index.encode())))
        self._hdel = b"".join((b"*3\r\n", bulk(b"HDEL"), bulk(self._table.encode())))
        self.waiting = False  # a take (BRPOP, or BLMOVE and TAKE) was sent and its answer not read
        self._skip = False  # the BLMOVE's answer (a wake-up, nothing taken) is read first
        self._more = False  # the last TAKE left messages in the queue: the next takes at once, without a BLMOVE
        self._arriving = 0  # taken by the last TAKE, not yet handed over
        self._sent_at = 0.0
        self._next_restore = 0.0  # at once: what an earlier worker left
        self._unsettled = 0
        self._cancelled = False
        self._reply: bytes | None = None  # the reply's LPUSH, packed, waiting for its message's ack
        # the system's poll objects themselves (a selector's bookkeeping costs a pass more than the wait)
        self._inbox_fd = worker._inbox.fd
        self._selector = select.epoll()
        self._selector.register(self._sock.fileno(), select.EPOLLIN)
        self._selector.register(self._inbox_fd, select.EPOLLIN)
        self._answering = select.epoll()  # the socket alone: see _read_owed
        self._answering.register(self._sock.fileno(), select.EPOLLIN)
        self._wait_s = min(IDLE_WAIT_S, worker._notifier.watchdog_interval or IDLE_WAIT_S)
        worker._session = self

    def _takes(self, keys: list[str], wait: float) -> Callable[[int, bool], bytes]:
        """What takes up to so many messages, at once or waiting for one: ``TAKE`` (pop and record in one
        script), with ``BLMOVE`` in front of it to wait (Redis >= 6.2, scripts allowed); else BRPOP, one
        message (its record written by the worker)."""
        from redis.exceptions import ResponseError

        conn = self._conn
        try:
            conn.send_command("COMMAND", "INFO", "BLMOVE")
            blmove = conn.read_response()
            conn.send_command("SCRIPT", "LOAD", _TAKE)
            sha = conn.read_response()
        except ResponseError as exc:  # refused (ACL): BRPOP
            log.info("Redis takes messages with BRPOP (%s)", exc)
            blmove, sha = [None], None
        if not blmove or blmove[0] is None or not sha:  # Redis < 6.2 has no BLMOVE
            self._scripted = False
            brpop = pack((("BRPOP", *keys, wait),))
            return lambda count, waits: brpop
        self._scripted = True
        sha = sha.decode() if isinstance(sha, bytes) else str(sha)
        # EVALSHA sha, the keys, then ARGV: how many, the records' tag (one per take), the queue (its JSON)
        args = ("EVALSHA", sha, len(keys) + 2, *keys, self._index, self._table)
        heads = [
            b"".join((b"*%d\r\n" % (len(args) + 3), *(bulk(str(arg).encode()) for arg in (*args, n))))
            for n in range(TAKE_MAX + 1)
        ]
        queue = bulk(json.dumps(self._worker._queue.name).encode())
        # the highest priority's list (kombu's first key) moved onto itself: a wait that takes nothing
        blmove = pack((("BLMOVE", keys[0], keys[0], "RIGHT", "RIGHT", wait),))
        base, tags = self._tag_base, self._tags

        def take(count: int, waits: bool) -> bytes:
            tag = bulk(b"%s%012x." % (base.encode(), next(tags)))
            return b"".join((blmove if waits else b"", heads[count], tag, queue))

        return take

    # -- the loop --------------------------------------------------------------

    def drain(self, conn: Connection, raw: Any) -> None:
        """Wait for the socket or the inbox; read the answers and the message that came; take the inbox; write
        what the pass wrote (with the next take, within the prefetch)."""
        worker = self._worker
        now = time.monotonic()
        if now >= self._next_restore:
            self._next_restore = now + self._restore_every
            self._qos.restore_visible(num=self._restore_limit, interval=1)  # its own throttle: see __init__
        if self._unparsed:
            self._unparsed = False
            self._answers()
        self._write()
        inbox = worker._inbox
        pending = self._tls and self._sock.pending()  # TLS: read from the socket already, not seen by select
        inbox.asleep = True  # set before the inbox is looked at: see Inbox.put
        try:
            events = self._selector.poll(0 if inbox or pending or self._unparsed else self._wait_s)
        finally:
            inbox.asleep = False
        readable = pending
        for fd, _ in events:
            if fd == self._inbox_fd:
                inbox.drain_pipe()
            else:
                readable = True
        if readable or self._unparsed:
            self._unparsed = False
            if readable:
                self._recv()
            self._answers()
        elif self.waiting and time.monotonic() - self._sent_at > self._overdue_s:
            raise ConnectionLost(f"Redis did not answer a take within {self._overdue_s:g} s")
        if inbox:
            worker._take_inbox()
        self._write()

    def _write(self) -> None:
        """What the pass wrote, in one write: on this connection with the next take in front of it; while a
        take waits, on the book's, once every record this one carried is in (its answers read)."""
        out = self._out
        room = self._worker._prefetch - self._unsettled - self._arriving
        ask = not self.waiting and not self._cancelled and room > 0
        if self.waiting:
            if out:
                self._read_owed()
                self._book.send(b"".join(out), self._out_count)
                out.clear()
                self._out_count = 0
            return
        if not out and not ask:
            return
        if ask:
            out.append(self._take(min(room, TAKE_MAX), not self._more))
        data = b"".join(out)
        out.clear()
        self._send(data)
        self._owed += self._out_count
        self._out_count = 0
        if ask:
            self.waiting, self._sent_at = True, time.monotonic()
            self._skip = self._scripted and not self._more

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"writing to Redis failed: {exc}") from exc

    def _recv(self) -> None:
        try:
            chunk = self._sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ConnectionLost(f"reading from Redis failed: {exc}") from exc
        if not chunk:
            raise ConnectionLost("Redis closed the connection")
        self._rbuf += chunk

    def _answers(self) -> None:
        """Every whole answer read: those owed (an error fails the connection), then the take's."""
        buf = self._rbuf
        pos = 0
        try:
            while True:
                if self._owed:
                    pos = _owed_answer(buf, pos)
                    self._owed -= 1
                    continue
                answer, pos = read_answer(buf, pos)
                if self.waiting:
                    if answer.__class__ is RedisError:  # NOSCRIPT (the scripts flushed) among them: start again
                        _raise_error(answer)  # (a take's array holds no error: its parts are not looked at)
                    if self._skip:  # the BLMOVE's: something came, or it timed out; the TAKE's is next
                        self._skip = False
                        continue
                    self.waiting = False
                    del buf[:pos]  # before the message is handed over (its record is read after it)
                    pos = 0
                    if answer is None:  # nothing (timed out, or cut short): idle, the book's answers are read
                        self._more = False
                        self._book.flush()
                    elif self._scripted:  # [more left, message, its record's tag, message, tag …]
                        self._more = answer[0] == b"1"
                        self._arriving = len(answer) // 2
                        for at in range(1, len(answer), 2):
                            self._arriving -= 1
                            self._deliver(answer[at], answer[at + 1].decode())
                    else:  # BRPOP's [key, message]
                        self._deliver(answer[1], None)
                else:
                    raise ConnectionLost(f"Redis answered nothing that was asked: {answer!r:.100}")
        except Incomplete:
            del buf[:pos]

    def _read_owed(self) -> None:
        """Read until every answer owed is in (Redis sent them before it began the take: they come at once);
        the take's answer, should it come along, is left for the next pass."""
        buf = self._rbuf
        pos = 0
        while self._owed:
            try:
                pos = _owed_answer(buf, pos)
            except Incomplete:
                del buf[:pos]
                pos = 0
                self._recv_blocking()
                continue
            self._owed -= 1
        del buf[:pos]
        self._unparsed = bool(buf)

    def _recv_blocking(self) -> None:
        buffered = self._tls and self._sock.pending()
        if not buffered and not self._answering.poll(self._overdue_s):  # a half-open socket: never readable
            raise ConnectionLost(f"Redis did not answer within {self._overdue_s:g} s")
        self._recv()

    def _deliver(self, payload: bytes, recorded: str | None) -> None:
        """kombu's message (its JSON) as kombu's channel decodes it, recorded as kombu records it (by ``TAKE``
        already, under the tag ``recorded``; or here, under the message's delivery tag), handed over."""
        tag = recorded
        try:
            message = json.loads(payload)
            props = message["properties"]
            info = props["delivery_info"]
            headers = message.get("headers") or {}
            body = _kombu_body(self._channel, message, props, headers)
            if recorded is None:  # kombu's record, [message, exchange, routing key] in JSON, the message as it came
                tag = str(props["delivery_tag"])
                record = b"[%s,%s,%s]" % (
                    payload,
                    json.dumps(info["exchange"]).encode(),
                    json.dumps(info["routing_key"]).encode(),
                )
        except Exception as exc:  # popped, and nothing can restore it: kombu's consumer would have lost it too
            log.error(
                "a message on %s that is not kombu's was dropped (%s): %r", self._worker._queue.name, exc, payload[:200]
            )
            if recorded is not None:  # its record goes too: restored, it would be dropped again and again
                btag = bulk(tag.encode())
                self._out += (_MULTI, self._zrem, btag, self._hdel, btag, _EXEC)
                self._out_count += 4
            return
        assert tag is not None
        if recorded is None:
            btag = bulk(tag.encode())
            stamp = bulk(repr(time.time()).encode())
            self._send(b"".join((_MULTI, self._zadd, stamp, btag, self._hset, btag, bulk(record), _EXEC)))
            self._owed += 4
        self._remember(self._qos, tag, tag)
        self._unsettled += 1
        delivery = Delivery(
            body=body,
            content_type=message.get("content-type"),
            headers=headers,
            message_id=props.get("message_id"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            redelivered=bool(info.get("redelivered")),
        )
        self._worker._receive(delivery, Port(self._worker, self, tag, props.get("message_id")))

    def cancel(self) -> None:
        """No take from now on; one waiting is cut short (``CLIENT UNBLOCK``: it answers as if timed out, or
        with the message Redis had popped for it, which the pipeline, stopping, gives back). The loop reads its
        answer before it lets the connection go (``_Consumer.busy``)."""
        self._cancelled = True
        if self.waiting and self._client_id is not None:
            try:
                with self._channel.conn_or_acquire() as client:  # a pooled connection, as kombu's restore's
                    client.execute_command("CLIENT", "UNBLOCK", self._client_id)
            except Exception as exc:  # its own timeout ends it instead
                log.debug("CLIENT UNBLOCK failed: %s", exc)

    def lost(self) -> None:
        self.alive = False
        self._selector.close()
        self._answering.close()
        self._book.close()
        self._conn.disconnect()
        self._pool.release(self._conn)

    # -- replies and settling --------------------------------------------------

    def publish(self, outgoing: Outgoing, done: Done) -> None:
        """The message kombu's Producer would build (the body is JSON bytes already), as kombu's channel would
        LPUSH it; written together with its message's ack, in one MULTI/EXEC, when ``done`` settles the message
        (right away, on this thread): never an ack without the reply nor a reply without the ack. Should
        nothing settle it within ``done``, the reply goes out alone. Written at the end of the pass: a write
        that fails leaves the message to Redis, which hands it out again (the journal answers it)."""
        queue = outgoing.routing_key
        text = None
        if self._base64:  # kombu's prepare_message and _inplace_augment_message, in one go, as JSON text
            tag = f"{self._tag_base}{next(self._tags):012x}"
            with contextlib.suppress(TypeError, ValueError):  # a header only kombu's encoder knows: below
                text = kombu_message(outgoing.body, outgoing.headers, reply_properties(outgoing), queue, tag)
        if text is None:
            text = self._kombu_text(outgoing)
        self._reply = lpush((self._prefix + queue).encode(), text)
        try:
            done(None)
        finally:
            reply, self._reply = self._reply, None
        if reply is not None:
            self._out += (_MULTI, reply, _EXEC)
            self._out_count += 3

    def _kombu_text(self, outgoing: Outgoing) -> bytes:
        """kombu's message as kombu's channel builds it (its encodings other than its defaults), in JSON."""
        channel = self._channel
        message = channel.prepare_message(
            outgoing.body, None, JSON_CONTENT_TYPE, "utf-8", dict(outgoing.headers), reply_properties(outgoing)
        )
        channel._inplace_augment_message(message, "", outgoing.routing_key)
        try:
            text = json.dumps(message)  # the C encoder; kombu's makes an encoder per call
        except TypeError:  # a header only kombu's encoder knows (a UUID, a datetime …)
            text = self._json(message)
        return text.encode()

    def settle(self, tag: str, ack: bool) -> None:
        self._unsettled -= 1
        out = self._out
        reply, self._reply = self._reply, None
        if ack:
            btag = bulk(tag.encode())
            if reply is not None:
                out += (_MULTI, reply, self._zrem, btag, self._hdel, btag, _EXEC)
                self._out_count += 5
            else:
                out += (_MULTI, self._zrem, btag, self._hdel, btag, _EXEC)
                self._out_count += 4
            self._forget(self._qos, tag)
            return
        if reply is not None:
            out += (_MULTI, reply, _EXEC)
            self._out_count += 3
        # kombu restores the message from its record on a connection of its own: the record and what went
        # before are in first
        self._write()
        self._read_owed()
        self._book.flush()
        self._qos.reject(tag, requeue=True)


# TAKE: up to ARGV[1] messages popped from the queue's lists (kombu's keys, highest priority first, as BRPOP takes
# them) and each recorded as kombu's QoS.append records a delivery (KEYS: the lists, then kombu's unacked index and
# table), in one step: from then on Redis gives them back after the visibility timeout, whatever becomes of the
# worker. The record: [message as it came, "", the queue's name (ARGV[3], in JSON)]: kombu's restore puts it back
# on that queue (the default exchange's routing), at its priority. Its tag: ARGV[2] and the message's place in the
# take (the message is not decoded here: that costs Redis more than the rest). Answers nil (nothing), or [1 if any
# list has more, message, tag, message, tag …]. The score is Redis's clock.
_TAKE = """
local lists, count, base = #KEYS - 2, tonumber(ARGV[1]), ARGV[2]
local tail = ',"",' .. ARGV[3] .. ']'
local taken, now, k, i = {0}, nil, 0, 1
while i <= lists and k < count do
  local message = redis.call('RPOP', KEYS[i])
  if message then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    k = k + 1
    local tag = base .. k
    redis.call('ZADD', KEYS[lists + 1], now, tag)
    redis.call('HSET', KEYS[lists + 2], tag, '[' .. message .. tail)
    taken[2 * k] = message
    taken[2 * k + 1] = tag
  else
    i = i + 1
  end
end
if k == 0 then return false end
for j = i, lists do
  if redis.call('LLEN', KEYS[j]) > 0 then taken[1] = 1 break end
end
return taken
"""

_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def _owed_answer(buf: bytearray, pos: int) -> int:
    """Past one answer owed to the worker's writes (``+OK``, ``+QUEUED``, a transaction's integers), read
    without building it; an error in it raises (``_raise_error``)."""
    if pos >= len(buf):
        raise Incomplete
    kind = buf[pos]
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    if kind == 43 or kind == 58:  # "+", ":"
        return end + 2
    if kind != 42:  # not "*": anything else, an error among them
        answer, end = read_answer(buf, pos)
        _raise_error(answer)
        return end
    at = end + 2
    for _ in range(int(buf[pos + 1 : end])):
        if at >= len(buf):
            raise Incomplete
        if buf[at] != 58:  # not an integer: the whole answer, built
            answer, end = read_answer(buf, pos)
            _raise_error(answer)
            return end
        end = buf.find(b"\r\n", at)
        if end < 0:
            raise Incomplete
        at = end + 2
    return at


def _raise_error(answer: Any) -> None:
    """An answer owed to the worker's writes that is an error, or a transaction's with one, fails the
    connection: what was written after it is out of step (kombu's restore hands its messages out again)."""
    if isinstance(answer, RedisError) or (
        isinstance(answer, list) and any(isinstance(part, RedisError) for part in answer)
    ):
        raise ConnectionLost(f"Redis refused what the worker wrote: {answer!r:.200}")


def _kombu_body(channel: Any, message: dict[str, Any], props: dict[str, Any], headers: dict[str, Any]) -> bytes:
    """The body as kombu's Message gives it: decoded (base64, kombu's default), then decompressed when its
    headers say so."""
    body = message.get("body")
    if body:
        encoding = props.get("body_encoding")
        # kombu's default (base64) decoded here, as kombu's codec does: its lookup costs more than the decode
        body = base64.b64decode(body) if encoding == "base64" else channel.decode_body(body, encoding)
    data = b"" if body is None else body if isinstance(body, bytes) else str(body).encode()
    compression = headers.get("compression")
    if compression:
        from kombu.compression import decompress

        with contextlib.suppress(Exception):  # kombu's Message keeps the body as it came, too
            data = decompress(data, compression)
    return data


class RedisBook:
    """The Redis session's second connection: what the worker writes while its take waits on the first.

    Nothing is waited for: Redis has the commands and runs them in order (a transaction that failed leaves
    its message unacked, and Redis hands it out again after the visibility timeout, as after a crash: the
    journal answers it); the answers are read in batches (``UNREAD_MAX``, and whenever the session is idle),
    and a failed one then fails the connection.
    """

    def __init__(self, channel: Any):
        self._pool = channel.pool
        self._conn = self._pool.get_connection()
        self._unread = 0  # answers Redis owes on the connection

    def send(self, commands: bytes, count: int) -> None:
        """``count`` commands, in RESP."""
        # no health check: its PING would read an answer owed to an earlier command
        self._conn.send_packed_command([commands], check_health=False)
        self._unread += count
        if self._unread >= UNREAD_MAX:
            self.flush()

    def flush(self) -> None:
        """Read every answer Redis owes; an error in any of them fails the connection (its replies are
        out of step with what was sent)."""
        conn = self._conn
        try:
            while self._unread:
                answer = conn.read_response()  # raises an error answer
                self._unread -= 1
                for part in answer if isinstance(answer, list) else ():
                    if isinstance(part, Exception):
                        raise part
        except BaseException:
            self._unread = 0
            conn.disconnect()
            raise

    def close(self) -> None:
        self._unread = 0
        self._conn.disconnect()
        self._pool.release(self._conn)
