"""What py-amqp's own frame writer writes for a method (and its message): the bytes the hand-made frames
(kvmworker/transport/amqp_frames.py) are held to."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from amqp.method_framing import frame_writer

FRAME_MAX = 131072


def py_amqp_frames(
    channel: int, method: tuple[int, int], args: bytes, content: Any = None, frame_max: int = FRAME_MAX
) -> bytes:
    """The frames py-amqp writes for ``method`` with ``args`` (and ``content``, a Message) on ``channel``."""
    written: list[bytes] = []
    connection = SimpleNamespace(frame_max=frame_max, bytes_sent=0)
    frame_writer(connection, SimpleNamespace(write=lambda frame: written.append(bytes(frame))))(
        1, channel, method, args, content
    )
    return b"".join(written)
