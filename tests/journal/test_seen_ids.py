"""The journal's memory of the msg_ids its file may hold: never wrong about one it was told of."""

from __future__ import annotations

import uuid

from kvmworker.journal.seen import HASHES, SeenIds, _Layer, _positions


def test_every_added_msg_id_is_held_as_the_filter_grows_layer_by_layer():
    seen = SeenIds(capacity=1024)
    added = [str(uuid.uuid4()) for _ in range(10_000)]  # about ten times the first layer
    for msg_id in added:
        seen.add(msg_id)
    assert len(seen) == len(added)
    assert all(seen.may_hold(msg_id) for msg_id in added)


def test_most_msg_ids_never_added_are_known_absent():
    seen = SeenIds(capacity=1024)
    for _ in range(5_000):
        seen.add(str(uuid.uuid4()))
    absent = [str(uuid.uuid4()) for _ in range(10_000)]
    said_maybe = sum(seen.may_hold(msg_id) for msg_id in absent)
    assert said_maybe < len(absent) * 0.05  # about 1 % by design; a miss only costs a read of the file


def test_a_msg_id_sets_exactly_the_bits_of_its_positions_and_is_held_by_them_alone():
    for msg_id in (str(uuid.uuid4()) for _ in range(200)):
        layer = _Layer(1024)
        layer.add(hash(msg_id))
        wanted = set(_positions(hash(msg_id), layer.size))
        set_bits = {i for i in range(layer.size) if layer.bits[i >> 3] & (1 << (i & 7))}
        assert set_bits == wanted and 1 <= len(wanted) <= HASHES
        assert layer.has(hash(msg_id))
        for missing in wanted:  # any one of its bits cleared: no longer held
            layer.bits[missing >> 3] &= ~(1 << (missing & 7))
            assert not layer.has(hash(msg_id))
            layer.bits[missing >> 3] |= 1 << (missing & 7)
