"""What signing costs: Ed25519 sign + verify per message in-process (a command signed by the orchestrator and
verified by the worker, its reply signed by the worker and verified by the client), and a signed beside an
unsigned RPC round trip.

    .venv/bin/python bench/trust.py [--calls 1000] [--amqp URL]

Both workers run in-process threads on the same broker in one run, so the ratio is what matters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmworker.client import Client
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from kvmworker.trust.keys import Fixed, PrivateKeys, TrustedKeys, encode_public, write_private_keys
from kvmworker.trust.signing import Signer, WorkerKeys, load_signer

BODY = json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}}).encode()
REPLY = json.dumps({"code": 0, "msg": "成功", "data": {"host": "h"}}).encode()


def signature_cost(n: int) -> dict[str, float]:
    """µs per message for each of the four signature operations of one signed call."""
    orchestrator, reply = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signer = Signer(
        Fixed(PrivateKeys("o1", {"o1": orchestrator})),
        Fixed(TrustedKeys(hosts={"h": {"r1": reply.public_key()}})),
    )
    worker = WorkerKeys(
        "h", Fixed(TrustedKeys(orchestrator={"o1": orchestrator.public_key()})), Fixed(PrivateKeys("r1", {"r1": reply}))
    )
    now = time.time()
    headers = {HEADER_HOST: "h", HEADER_ISSUED_AT: now, HEADER_EXPIRES_AT: now + 30}
    msg_id = str(uuid.uuid4())
    signed = headers | signer.sign(BODY, msg_id, "h", "q", headers)
    reply_headers = worker.sign_reply(REPLY, "c", msg_id)
    steps = {
        "command sign (client)": lambda: signer.sign(BODY, msg_id, "h", "q", headers),
        "command verify (worker)": lambda: worker.verify(BODY, msg_id, "h", "q", signed),
        "reply sign (worker)": lambda: worker.sign_reply(REPLY, "c", msg_id),
        "reply verify (client)": lambda: signer.reply_is_authentic(REPLY, "c", msg_id, reply_headers, "h"),
    }
    costs = {}
    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(n):
            step()
        costs[name] = (time.perf_counter() - started) / n * 1e6
    return costs


def write_keys(tmp: Path, host: str) -> tuple[Settings, Signer]:
    """Key files as deployed: the orchestrator's private key, the worker's trust, the client's trust."""
    orchestrator, reply = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    files = tmp / f"keys-{host}"
    write_private_keys(files / "orchestrator.json", PrivateKeys("o1", {"o1": orchestrator}), replace=False)
    write_private_keys(files / "reply.json", PrivateKeys("r1", {"r1": reply}), replace=False)
    (files / "worker-trust.json").write_text(
        json.dumps({"orchestrator": {"o1": encode_public(orchestrator.public_key())}})
    )
    (files / "client-trust.json").write_text(json.dumps({"hosts": {host: {"r1": encode_public(reply.public_key())}}}))
    worker = Settings(keys_file=files / "reply.json", trusted_keys_file=files / "worker-trust.json")
    client = Settings(keys_file=files / "orchestrator.json", trusted_keys_file=files / "client-trust.json")
    return worker, load_signer(client)


def round_trips(url: str, calls: int, signed: bool, tmp: Path) -> list[float]:
    host = f"kvt-bench-{uuid.uuid4().hex[:8]}"
    keys: dict = {}
    signer = None
    if signed:
        worker_keys, signer = write_keys(tmp, host)
        keys = {"keys_file": worker_keys.keys_file, "trusted_keys_file": worker_keys.trusted_keys_file}
    settings = Settings(host=host, broker_url=url, state_dir=tmp / host, **keys)
    running = start_worker(settings)
    running.worker.connected.wait(15)
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
    costs = signature_cost(5000)
    print("Ed25519 per message: " + ", ".join(f"{name} {us:.1f} µs" for name, us in costs.items()))
    print(f"  all four, one signed call: {sum(costs.values()):.1f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        plain: list[float] = []
        signed: list[float] = []
        for _ in range(2):  # alternated, so that neither profits from running second
            signed += round_trips(args.amqp, args.calls // 2, True, Path(tmp))
            plain += round_trips(args.amqp, args.calls // 2, False, Path(tmp))
    p50 = statistics.median(plain) * 1000, statistics.median(signed) * 1000
    p99 = (sorted(plain)[int(len(plain) * 0.99)] * 1000, sorted(signed)[int(len(signed) * 0.99)] * 1000)
    print(
        f"RabbitMQ ping round trip, {args.calls} calls: p50 unsigned {p50[0]:.2f} ms, signed {p50[1]:.2f} ms "
        f"(ratio {p50[1] / p50[0]:.2f}); p99 {p99[0]:.2f} / {p99[1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
