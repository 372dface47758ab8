"""The HTTP bridge under ``wrk``, beside the client library's RPC alone, in one run.

    .venv/bin/python bench/bridge.py [--broker amqp://guest:guest@localhost:5672//] [--duration 3] [--rounds 3]

A ``kvmworker worker`` process and a ``kvmworker bridge`` process (``--token-file``: every request carries
the bearer token, as in production) on the broker. Each round runs ``wrk`` with 1 and 64 keep-alive
connections, then the same number of threads calling ``SystemHandler.ping`` through ``kvmworker.client``;
the medians of the rounds show what the bridge adds over the RPC alone. ``bench/rpc.py`` runs the same
rows among the issue's targets (``--only 'bridge-*,amqp-default'``). Every process shares this machine's
cores, so compare within one run only.

``wrk``'s Lua script reads every reply: an answer whose ``code`` is not 0 counts as an error
(a bridge that answers 20004 fast must not look fast).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from subjects import KvmSubject, kvmworker_process, stop

PING = {"handler": "SystemHandler", "command": "ping", "data": {}}
# answered by the bridge itself, after the guard, the token check and the parse: its own ceiling, no broker
LOGOUT = {"handler": "UserHandler", "command": "logout", "data": {}}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"code":0,', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("wrong replies: %d\\n", total))
end
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class BridgeSubject:
    """A ``kvmworker bridge`` process in front of ``default_host``, with a token file of its own."""

    def __init__(self, broker: str, default_host: str):
        self._scratch = tempfile.TemporaryDirectory(prefix="kvt-bench-")
        scratch = Path(self._scratch.name)
        argv = ["bridge", "--broker", broker, "--port", "0", "--default-host", default_host]
        argv += ["--log-level", "WARNING", "--token-file", str(scratch / "token")]
        self.process = kvmworker_process(argv, scratch, "bridge.log", stdout=subprocess.PIPE, text=True)
        try:
            self.url = self._listening_url()
            self.token = (scratch / "token").read_text().strip()
            self._warm_up()
        except BaseException:
            self.close()  # nobody else holds it yet
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _listening_url(self) -> str:
        for line in self.process.stdout:
            if found := re.search(r"(http://\S+)", line):
                return found.group(1)
        log = Path(self._scratch.name, "bridge.log").read_text()[-2000:]
        raise RuntimeError(f"the bridge did not start; its log ends:\n{log}")

    def _warm_up(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(headers=headers, timeout=30) as http:
            reply = http.post(self.url + "/", json=PING).json()
            if reply["code"] != 0:
                raise RuntimeError(f"the bridge answered a ping with {reply}")
            for _ in range(200):
                http.post(self.url + "/", json=PING)

    def wrk(self, connections: int, seconds: float, body: dict = PING) -> dict[str, float]:
        return run_wrk(self.url, self.token, connections, seconds, body)

    def close(self) -> None:
        stop(self.process)
        self._scratch.cleanup()


def run_wrk(url: str, token: str, connections: int, seconds: float, body: dict) -> dict[str, float]:
    """Requests per second, p50 and p99 in ms; one ``wrk`` thread (two cores to share), whole seconds."""
    script_text = WRK_SCRIPT.format(body=json.dumps(body, separators=(",", ":")), token=token)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(script_text)
        script.flush()
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            url + "/",
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    wrong = int(re.search(r"wrong replies: (\d+)", out).group(1))
    if wrong or "Socket errors" in out:
        raise RuntimeError(f"wrk saw {wrong} wrong replies or socket errors:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"per_s": float(found.group(1)), "p50_ms": _wrk_ms(out, "50%"), "p99_ms": _wrk_ms(out, "99%")}


def _wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * UNITS[unit]


class RawBackedBridge(BridgeSubject):
    """A bridge in front of a raw py-amqp responder on the host's queue: the bridge's forwarding at full speed, with
    the cheapest possible worker behind it (``bridge-raw-64``), so that the worker's own cost does not bound it."""

    def __init__(self, broker: str, host_port: str):
        from peers import AMQP_RESPONDER, responder

        from kvmworker.protocol.wire import host_queue_name

        host = f"kvt-bench-raw-{uuid.uuid4().hex[:8]}"
        self.responder = responder(AMQP_RESPONDER, host_port, host_queue_name(host), "own")
        try:
            super().__init__(broker, host)
        except BaseException:
            self.responder.kill()
            raise

    def close(self) -> None:
        super().close()
        self.responder.kill()
        self.responder.wait()


class InProcessApp:
    """The bridge's ASGI application in this process, driven without a socket: its own cost per request.

    ``UserHandler.logout`` with the local token goes through everything a forwarded call does on the event
    loop (guard, routing, body, parse, token check, metrics, reply) except the broker, so the time per
    request, the fastest of several repeats, is the bridge's own overhead whatever else loads the machine.
    """

    def __init__(self):
        from kvmworker.bridge.app import create_app
        from kvmworker.bridge.auth import LocalToken
        from kvmworker.client import Client
        from kvmworker.settings import Settings

        self._scratch = tempfile.TemporaryDirectory(prefix="bench-")
        settings = Settings(host="bench-app", broker_url="memory://", state_dir=self._scratch.name)
        self._client = Client("memory://")
        token = "b" * 43
        self.app = create_app(settings, self._client, local=LocalToken(token))
        headers = [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"), (b"content-type", b"application/json")]
        body = json.dumps(LOGOUT).encode()
        headers += [(b"authorization", b"Bearer " + token.encode()), (b"content-length", str(len(body)).encode())]
        self._scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
        self._scope |= {"scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": ""}
        self._scope |= {"headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
        self._message = {"type": "http.request", "body": body, "more_body": False}

    def cost_us(self, requests: int, repeats: int) -> float:
        """µs per request: the fastest of ``repeats`` runs of ``requests`` requests one after the other."""
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return min(runner.run(self._run(requests)) for _ in range(repeats)) / requests * 1e6

    async def _run(self, requests: int) -> float:
        sent: list[dict] = []

        async def receive() -> dict:
            return self._message

        async def send(message: dict) -> None:
            sent.append(message)

        started = time.perf_counter()
        for _ in range(requests):
            await self.app(dict(self._scope), receive, send)
        elapsed = time.perf_counter() - started
        if b'"code":0,' not in sent[-1]["body"]:
            raise RuntimeError(f"the bridge answered {sent[-1]['body'][:200]!r}")
        return elapsed

    def close(self) -> None:
        self.app.state.bridge.close()
        self._client.close()
        self._scratch.cleanup()


def event_loop_factory():
    """uvloop's, as uvicorn picks when it is installed (it is a dependency)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def client_row(subject: KvmSubject, callers: int, seconds: float) -> dict[str, float]:
    if callers == 1:
        samples = sorted(subject.latencies(max(50, int(seconds * 300))))
        return {"per_s": len(samples) / sum(samples), "p50_ms": statistics.median(samples) * 1e3}
    started = time.perf_counter()
    done = subject.throughput(callers, seconds)
    return {"per_s": done / (time.perf_counter() - started), "p50_ms": float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="amqp://guest:guest@localhost:5672//")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    subject = KvmSubject(args.broker)
    bridge = BridgeSubject(args.broker, subject.host)
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for connections in (1, 64):
                rows.setdefault(f"bridge, {connections} conns", []).append(bridge.wrk(connections, args.duration))
                rows.setdefault(f"client, {connections} callers", []).append(
                    client_row(subject, connections, args.duration)
                )
        rows["bridge alone (UserHandler.logout, no broker), 64 conns"] = [bridge.wrk(64, args.duration, LOGOUT)]
    finally:
        bridge.close()
        subject.close()
    print(f"\n{'median of rounds':44s} {'per s':>8s} {'p50 ms':>8s}")
    for name, rounds in rows.items():
        per_s = statistics.median(r["per_s"] for r in rounds)
        p50 = statistics.median(r["p50_ms"] for r in rounds)
        print(f"{name:44s} {per_s:8.0f} {p50:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
