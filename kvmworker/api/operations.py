"""The data of SystemHandler's long-running-command commands (INTERFACE §8): ``operations`` and ``cancel``.

Pydantic and ``kvmworker.protocol`` only, like every module of ``kvmworker.api``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kvmworker.protocol.types import Uuid


class OperationsQuery(BaseModel):
    model_config = ConfigDict(defer_build=True)
    state: Literal["running", "recent"] = Field(
        default="running",
        description="running: the commands queued or running now; recent: the last 100 answered, newest first",
    )


class CancelQuery(BaseModel):
    model_config = ConfigDict(defer_build=True)
    msg_id: Uuid = Field(description="the command to cancel: dropped if still queued, told to stop if running")
