"""Long-running commands as events (§7, §8): ``operation.progress`` and ``operation.done``.

An observer of the pipeline's operations (``kvmworker.dispatch.operations``). It is called on the command's own
thread and only emits (numbered, written to the buffer, the sender woken): it never waits for the broker.

- ``operation.progress``, state ``running``: each time a command reports a new whole percent or a new phase;
  ``data.progress`` (0–100, or null when the command says only its phase) and ``data.phase``.
- ``operation.done``, state ``done`` (code 0), ``cancelled`` (30013) or ``failed`` (any other code), with
  ``data.code``: for a command that ran longer than ``DONE_AFTER_S`` (the quick ones' replies say enough).

Subject and ``msg_id``: the command's msg_id. ``data`` also names the handler and the command.
"""

from __future__ import annotations

from typing import Any

from kvmworker.dispatch.operations import Operation
from kvmworker.events.emitter import Emitter
from kvmworker.events.model import OPERATION_DONE, OPERATION_PROGRESS
from kvmworker.protocol.codes import Code

DONE_AFTER_S = 2.0


class OperationEvents:
    def __init__(self, emitter: Emitter, done_after: float = DONE_AFTER_S):
        self._emitter = emitter
        self._done_after = done_after

    def progressed(self, op: Operation) -> None:
        view = op.view()
        data = {**_names(view), "progress": view["progress"], "phase": view["phase"]}
        self._emitter.emit(*OPERATION_PROGRESS, op.msg_id, "running", msg_id=op.msg_id, data=data)

    def ended(self, op: Operation) -> None:
        ran_for = op.ran_for
        if ran_for is None or ran_for <= self._done_after:
            return
        view = op.view()
        data = {**_names(view), "code": view["code"], "duration_s": round(ran_for, 3)}
        self._emitter.emit(*OPERATION_DONE, op.msg_id, _outcome(view["code"]), msg_id=op.msg_id, data=data)


def _names(view: dict[str, Any]) -> dict[str, Any]:
    return {"handler": view["handler"], "command": view["command"]}


def _outcome(code: int | None) -> str:
    if code == Code.OK:
        return "done"
    return "cancelled" if code == Code.CANCELLED else "failed"
