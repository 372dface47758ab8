"""The parts on their own, where a real clock or broker would only make the test slow: Causes' window, the
gap detector's verdicts, the buffer's numbering and bound on a real SQLite file."""

from __future__ import annotations

import stat

import pytest

from kvmworker.events import Causes, Emitter, EventBuffer
from kvmworker.events.buffer import FILE_NAME
from kvmworker.events.consumer import Gap, GapDetector
from kvmworker.events.model import Event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_noted_cause_holds_for_the_window_and_then_says_nothing():
    clock = Clock()
    causes = Causes(window=5, clock=clock)
    causes.note("kvt-vm", "m1")
    clock.now += 4.9
    assert causes.cause("kvt-vm") == "m1"
    assert causes.cause("kvt-other") is None
    clock.now += 0.2
    assert causes.cause("kvt-vm") is None


def test_a_cause_acting_holds_while_the_command_runs_and_for_the_window_after_it_ends():
    clock = Clock()
    causes = Causes(window=5, clock=clock)
    with causes.acting("kvt-vm", "m1"):
        clock.now += 60  # a long shutdown
        assert causes.cause("kvt-vm") == "m1"
    clock.now += 4
    assert causes.cause("kvt-vm") == "m1", "events arrive after the call returned"
    clock.now += 2
    assert causes.cause("kvt-vm") is None


def test_the_latest_command_on_a_subject_is_its_cause():
    causes = Causes(window=5, clock=Clock())
    causes.note("kvt-vm", "m1")
    causes.note("kvt-vm", "m2")
    assert causes.cause("kvt-vm") == "m2"
    causes.note("kvt-vm", None)  # a command without msg_id changes nothing
    assert causes.cause("kvt-vm") == "m2"


def _event(seq: int, host: str = "h", state: str = "ticked", source: str = "probe", kind: str = "tick") -> Event:
    return Event(host=host, seq=seq, time=1.0, source=source, kind=kind, subject="s", state=state)


def test_the_gap_detector_passes_a_run_drops_repeats_and_names_what_was_skipped():
    detector = GapDetector()
    verdicts = [detector.check(_event(seq)) for seq in (7, 8, 8, 6, 11, 12)]
    assert verdicts == [(None, True), (None, True), (None, False), (None, False), (Gap("h", 9, 10), True), (None, True)]
    assert detector.check(_event(1, host="other")) == (None, True), "hosts are counted apart"


def test_a_host_that_starts_counting_again_is_a_reset_not_a_repeat():
    detector = GapDetector()
    detector.check(_event(40))
    gap, fresh = detector.check(_event(1, state="online", source="worker", kind="state"))
    assert fresh and gap == Gap("h", 41, 0, reset=True) and gap.missed == 0
    assert detector.check(_event(2)) == (None, True)


def test_the_sequence_is_kept_in_a_0600_file_and_continues_after_reopening(tmp_path):
    buffer = EventBuffer.in_state_dir(tmp_path)
    emitter = Emitter("h", buffer)
    assert [emitter.emit("probe", "tick", "s", "t").seq for _ in range(3)] == [1, 2, 3]
    buffer.close()
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    again = Emitter("h", EventBuffer.in_state_dir(tmp_path))
    assert again.emit("probe", "tick", "s", "t").seq == 4
    assert [seq for seq, _ in again.buffer.pending()] == [1, 2, 3, 4]


def test_a_number_whose_event_was_not_stored_is_not_used_and_the_next_event_gets_it(tmp_path):
    buffer = EventBuffer.in_state_dir(tmp_path)

    def broken(seq: int) -> bytes:
        raise OSError("disk full")

    with pytest.raises(OSError):
        buffer.append(broken)
    assert buffer.next_seq() == 1, "the number and the event are one transaction"
    emitter = Emitter("h", buffer)
    assert emitter.emit("probe", "tick", "s", "t").seq == 1


def test_an_emit_that_cannot_be_stored_is_logged_and_never_raises_into_the_source(tmp_path, caplog):
    buffer = EventBuffer.in_state_dir(tmp_path)
    emitter = Emitter("h", buffer)
    assert emitter.emit("Not A Word", "tick", "s", "t") is None  # refused by the model: said, not raised
    assert "not stored" in caplog.text
    assert emitter.emit("probe", "tick", "s", "t").seq == 1


def test_past_its_bound_the_buffer_drops_the_oldest_and_counts_them_until_a_sync_takes_the_count(tmp_path):
    buffer = EventBuffer.in_state_dir(tmp_path, capacity=3)
    emitter = Emitter("h", buffer)
    for _ in range(5):
        emitter.emit("probe", "tick", "s", "t")
    assert [seq for seq, _ in buffer.pending()] == [3, 4, 5]
    assert buffer.take_dropped() == 2 and buffer.take_dropped() == 0
    buffer.published(3)
    assert [Event.from_body(body).seq for body in buffer.recent()] == [3]
