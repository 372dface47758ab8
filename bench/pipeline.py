"""What a message costs outside the transport: the pipeline as ``kvmworker worker`` assembles it, no broker.

    .venv/bin/python bench/pipeline.py [--messages 2000] [--rounds 7] [--profile]

``app.assemble`` with the worker's events hub, then ``Pipeline.receive`` of a ``SystemHandler.ping`` delivery
carrying what the client sends (msg_id, correlation_id, reply_to, the host and time headers), with a port that
publishes nothing and says done at once. Everything else is the worker's: metrics, trust (open), command log,
journal (its writer's thread included). Per round: the process's CPU per message (every thread) and the calling
thread's alone; the best round is reported (this machine is shared: the best is the least disturbed).
Run it with each checkout's Python for before and after (``PYTHONPATH=<checkout>`` for a plain tree).
``--profile`` adds a cProfile of one round, by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import tempfile
import time
import uuid

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.events.wiring import create_events
from kvmworker.protocol.wire import HEADER_EXPIRES_AT, HEADER_HOST, HEADER_ISSUED_AT
from kvmworker.settings import Settings

HOST = "kvtbench"


class NullPort:
    def publish(self, outgoing, done) -> None:
        done(None)

    def settle(self, ack: bool) -> None:
        pass


def ping() -> Delivery:
    msg_id, now = str(uuid.uuid4()), time.time()
    body = json.dumps({"handler": "SystemHandler", "command": "ping", "data": {}, "msg_id": msg_id}).encode()
    headers = {HEADER_HOST: HOST, HEADER_ISSUED_AT: round(now, 6), HEADER_EXPIRES_AT: round(now + 10, 6)}
    return Delivery(
        body=body,
        content_type="application/json",
        headers=headers,
        message_id=msg_id,
        correlation_id=uuid.uuid4().hex,
        reply_to="kvt.reply.bench",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # as the bench's workers: no line per message
    with tempfile.TemporaryDirectory(prefix="kvt-bench-pipeline-") as state:
        settings = Settings(host=HOST, broker="memory://", state_dir=state)
        assembly = assemble(settings, events=create_events(settings))
        pipeline, port = assembly.pipeline, NullPort()
        try:
            for delivery in [ping() for _ in range(500)]:  # warm: the first of each kind builds caches
                pipeline.receive(delivery, port)
            best = (float("inf"), float("inf"))
            for _ in range(args.rounds):
                deliveries = [ping() for _ in range(args.messages)]
                process, thread = time.process_time(), time.thread_time()
                for delivery in deliveries:
                    pipeline.receive(delivery, port)
                assembly.journal.store.flush()  # the writer's thread has committed them: its CPU is in
                per = (time.process_time() - process, time.thread_time() - thread)
                best = min(best, (per[0] / args.messages * 1e6, per[1] / args.messages * 1e6))
            print(f"ping through the pipeline: {best[0]:.1f} µs CPU per message (process), {best[1]:.1f} µs on the")
            print(f"calling thread; best of {args.rounds} rounds of {args.messages}")
            if args.profile:
                deliveries = [ping() for _ in range(args.messages)]
                profile = cProfile.Profile()
                profile.enable()
                for delivery in deliveries:
                    pipeline.receive(delivery, port)
                profile.disable()
                stats = pstats.Stats(profile)
                stats.sort_stats("tottime").print_stats(20)
                stats.sort_stats("cumulative").print_stats(30)
        finally:
            assembly.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
