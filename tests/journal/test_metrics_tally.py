"""The worker's per-message metrics are counted by ``CommandTally``; a scraper must see exactly what
prometheus_client's own Counter, Histogram and Gauge would have shown for the same messages."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from kvmworker.observability.metrics import DURATION_BUCKETS, CommandTally

# (handler, command, code, duration): durations on a bound, between bounds, past the last one
ANSWERS = [
    ("SystemHandler", "ping", 0, 0.0004),
    ("SystemHandler", "ping", 0, 0.001),
    ("SystemHandler", "ping", 0, 0.0025),
    ("SystemHandler", "ping", 10001, 0.7),
    ("VmHandler", "start", 0, 12.5),
    ("VmHandler", "start", 0, 120),
    ("VmHandler", "start", 0, 500.0),
    ("unknown", "unknown", 20002, 0.00001),
]


def exposed(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the creation times (they are clocks read at different moments)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def created_series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("_created")
    }


def prometheus_reference(received: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    commands = Counter(
        "kvmworker_commands", "Commands answered, by handler, command and reply code.",
        ["handler", "command", "code"], registry=registry,
    )  # fmt: skip
    duration = Histogram(
        "kvmworker_command_duration_seconds", "From receipt to reply, by handler and command.",
        ["handler", "command"], buckets=DURATION_BUCKETS, registry=registry,
    )  # fmt: skip
    in_flight = Gauge("kvmworker_commands_in_flight", "Messages received and not yet answered.", registry=registry)
    in_flight.inc(received)
    for handler, command, code, seconds in ANSWERS:
        in_flight.dec()
        commands.labels(handler, command, str(code)).inc()
        duration.labels(handler, command).observe(seconds)
    return registry


def test_a_scrape_of_the_tally_shows_what_prometheus_clients_own_metrics_show_for_the_same_messages():
    registry = CollectorRegistry(auto_describe=True)
    tally = CommandTally()
    registry.register(tally)
    received = len(ANSWERS) + 2  # two still in flight
    for _ in range(received):
        tally.received()
    for answer in ANSWERS:
        tally.answered(*answer)
    reference = prometheus_reference(received)
    assert exposed(registry) == exposed(reference)
    assert exposed(registry)[("kvmworker_commands_in_flight", ())] == 2
    assert created_series(registry) == created_series(reference)


def test_answers_counted_from_many_threads_at_once_are_all_counted():
    tally, registry = CommandTally(), CollectorRegistry()
    registry.register(tally)
    threads, per_thread = 8, 2000

    def answer() -> None:
        for _ in range(per_thread):
            tally.received()
            tally.answered("SystemHandler", "ping", 0, 0.002)

    workers = [threading.Thread(target=answer) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    samples = exposed(registry)
    ping = (("code", "0"), ("command", "ping"), ("handler", "SystemHandler"))
    assert samples[("kvmworker_commands_total", ping)] == threads * per_thread
    timed = (("command", "ping"), ("handler", "SystemHandler"))
    assert samples[("kvmworker_command_duration_seconds_count", timed)] == threads * per_thread
    assert samples[("kvmworker_command_duration_seconds_bucket", (*timed, ("le", "0.0025")))] == (threads * per_thread)
    assert samples[("kvmworker_commands_in_flight", ())] == 0


def test_with_created_series_turned_off_the_tally_shows_none_either_as_prometheus_client_does():
    from prometheus_client import disable_created_metrics, enable_created_metrics

    disable_created_metrics()
    try:
        registry, tally = CollectorRegistry(), CommandTally()
        registry.register(tally)
        tally.received()
        tally.answered(*ANSWERS[0])
        reference = prometheus_reference(1)
        assert created_series(registry) == created_series(reference) == set()
    finally:
        enable_created_metrics()
    assert created_series(registry) != set()  # turned on again: as the process started
