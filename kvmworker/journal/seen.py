"""Which msg_ids a journal file may hold, answered from memory: a new msg_id (nearly every message) is known
to be absent without a read of the file.

A Bloom filter: ``may_hold`` is never wrong about a msg_id that was added (no false "absent"); about one that
was not, it says "maybe" about 1 time in 100, and then the journal reads the file as before. It grows by
layers (each twice the last), so that it never has to be rebuilt. Filled from the file when the worker's
store opens, then by every insert made through this process's writer of that file (``GroupWriter.seen``):
it knows what this process wrote and what was there at its start. That is the journal's premise: one worker
process writes a state directory's journal (the CLI only reads it, and prunes).
"""

from __future__ import annotations

import threading

BITS_PER_ID = 10  # with HASHES 4: about 1 % of absent msg_ids read the file anyway
HASHES = 4
FIRST_CAPACITY = 1 << 16


class SeenIds:
    def __init__(self, capacity: int = FIRST_CAPACITY):
        self._lock = threading.Lock()
        self._layers: list[_Layer] = []
        self._next_capacity = max(capacity, 1024)
        self._grow()

    def add(self, msg_id: str) -> None:
        h = hash(msg_id)
        with self._lock:
            layer = self._layers[-1]
            if layer.count >= layer.capacity:
                layer = self._grow()
            layer.add(h)

    def may_hold(self, msg_id: str) -> bool:
        h = hash(msg_id)
        for layer in self._layers:  # noqa: SIM110 (a loop, not any() over a generator: it runs per message)
            if layer.has(h):
                return True
        return False

    def __len__(self) -> int:
        return sum(layer.count for layer in self._layers)

    def _grow(self) -> _Layer:
        layer = _Layer(self._next_capacity)
        self._next_capacity *= 2
        self._layers.append(layer)
        return layer


class _Layer:
    __slots__ = ("bits", "capacity", "count", "size")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.size = capacity * BITS_PER_ID
        self.bits = bytearray((self.size + 7) // 8)

    def add(self, h: int) -> None:
        """Sets the ``HASHES`` bits of ``_positions``, unrolled (it runs per message)."""
        bits, size = self.bits, self.size
        h &= 0xFFFFFFFFFFFFFFFF
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        i = h1 % size
        bits[i >> 3] |= 1 << (i & 7)
        i = (h1 + h2) % size
        bits[i >> 3] |= 1 << (i & 7)
        i = (h1 + 2 * h2) % size
        bits[i >> 3] |= 1 << (i & 7)
        i = (h1 + 3 * h2) % size
        bits[i >> 3] |= 1 << (i & 7)
        self.count += 1

    def has(self, h: int) -> bool:
        """Whether the bits of ``_positions`` are all set, unrolled: most absent msg_ids fail at the first."""
        bits, size = self.bits, self.size
        h &= 0xFFFFFFFFFFFFFFFF
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        i = h1 % size
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        i = (h1 + h2) % size
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        i = (h1 + 2 * h2) % size
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        i = (h1 + 3 * h2) % size
        return bool(bits[i >> 3] & (1 << (i & 7)))


def _positions(h: int, size: int) -> tuple[int, ...]:
    """``HASHES`` bit positions from one 64-bit hash (double hashing: h1 + i·h2); ``_Layer`` unrolls them."""
    h &= 0xFFFFFFFFFFFFFFFF
    h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
    return ((h1) % size, (h1 + h2) % size, (h1 + 2 * h2) % size, (h1 + 3 * h2) % size)
