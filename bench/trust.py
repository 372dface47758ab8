"""What signing costs: HMAC sign + verify per message in-process, and a signed beside an unsigned RPC round trip.

    .venv/bin/python bench/trust.py [--calls 1000] [--amqp URL]

Both workers run in-process threads on the same broker in one run, so the ratio is what matters.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kvmworker.client import Client
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from kvmworker.transport.names import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.trust.keys import KeyRing
from kvmworker.trust.signing import Signer

BODY = json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}}).encode()


def hmac_cost(n: int) -> tuple[float, float]:
    signer = Signer(KeyRing("k1", {"k1": secrets.token_bytes(32)}))
    now = time.time()
    headers = {HEADER_HOST: "h", HEADER_ISSUED_AT: now, HEADER_EXPIRES_AT: now + 30}
    msg_id = str(uuid.uuid4())
    started = time.perf_counter()
    for _ in range(n):
        signed = headers | signer.sign(BODY, msg_id, "h", "q", headers)
    sign_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        signer.verify(BODY, msg_id, "h", "q", signed)
    return sign_us, (time.perf_counter() - started) / n * 1e6


def round_trips(url: str, calls: int, keys: Path | None, tmp: Path) -> list[float]:
    host = f"kvt-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(host=host, broker_url=url, state_dir=tmp / host, keys_file=keys)
    running = start_worker(settings)
    running.worker.connected.wait(15)
    signer = Signer(KeyRing("k1", {"k1": bytes.fromhex(json.loads(keys.read_text())["keys"]["k1"])})) if keys else None
    try:
        with Client(url, signer=signer) as client:
            client.call(host, "SystemHandler", "ping", timeout=10)  # warm up
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                assert client.call(host, "SystemHandler", "ping", timeout=10).code == 0
                times.append(time.perf_counter() - started)
            return times
    finally:
        running.stop(timeout=10)
        delete_host_queue(url, host)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672//")
    args = parser.parse_args()
    sign_us, verify_us = hmac_cost(20000)
    print(f"HMAC-SHA256 per message: sign {sign_us:.1f} µs, verify {verify_us:.1f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        keys.write_text(json.dumps({"active": "k1", "keys": {"k1": secrets.token_hex(32)}}))
        plain: list[float] = []
        signed: list[float] = []
        for _ in range(2):  # alternated, so that neither profits from running second
            signed += round_trips(args.amqp, args.calls // 2, keys, Path(tmp))
            plain += round_trips(args.amqp, args.calls // 2, None, Path(tmp))
    p50 = statistics.median(plain) * 1000, statistics.median(signed) * 1000
    p99 = (sorted(plain)[int(len(plain) * 0.99)] * 1000, sorted(signed)[int(len(signed) * 0.99)] * 1000)
    print(
        f"RabbitMQ ping round trip, {args.calls} calls: p50 unsigned {p50[0]:.2f} ms, signed {p50[1]:.2f} ms "
        f"(ratio {p50[1] / p50[0]:.2f}); p99 {p99[0]:.2f} / {p99[1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
