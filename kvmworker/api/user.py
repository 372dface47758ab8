"""UserHandler: the HTTP bridge's sessions. The bridge answers these itself; they never reach a worker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from kvmworker.dispatch.commands import command
from kvmworker.protocol.types import string_schema

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context


def _text_or_number(min_length: int, max_length: int) -> dict:
    """A number is read as its text (``coerce_numbers_to_str``); a bool is not a number here."""
    return {"anyOf": [string_schema(min_length=min_length, max_length=max_length), {"type": "number"}]}


class LoginData(BaseModel):
    # legacy callers send numeric passwords as numbers now and then
    model_config = ConfigDict(defer_build=True, extra="ignore", coerce_numbers_to_str=True)

    username: Annotated[str, Field(min_length=1, max_length=256), WithJsonSchema(_text_or_number(1, 256))]
    password: Annotated[str, Field(max_length=1024), WithJsonSchema(_text_or_number(0, 1024))]


class LogoutData(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")


class UserApi(ABC):
    """Nothing on a host changes (``mutates=False``): a session lives in the bridge's memory only."""

    name = "UserHandler"

    @command(LoginData, mutates=False)
    @abstractmethod
    def login(self, data: LoginData, ctx: Context) -> dict[str, Any]:
        """A session token for a user of the bridge's users file; wrong passwords make the next try wait longer."""

    @command(LogoutData, mutates=False)
    @abstractmethod
    def logout(self, data: LogoutData, ctx: Context) -> dict[str, Any]:
        """End the session of the token sent."""
