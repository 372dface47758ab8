"""The wire models: the request envelope and the reply (INTERFACE §1)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import InvalidRequest, KvmError
from kvmworker.protocol.types import Uuid, number

MAX_TIMEOUT_S = 24 * 3600


class Envelope(BaseModel):
    """What every caller sends: ``{command, handler, data}`` plus our optional extensions."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    command: StrictStr = Field(min_length=1, max_length=64)
    handler: StrictStr = Field(min_length=1, max_length=64)
    data: dict[str, Any]
    msg_id: Uuid | None = Field(default=None, description="Idempotency key; generated when absent.")
    dry_run: StrictBool = Field(default=False, description="Validate and return the plan; change nothing.")
    timeout: number(gt=0, le=MAX_TIMEOUT_S) | None = Field(default=None, description="Seconds the caller will wait.")
    token: StrictStr | None = Field(default=None, description="Bridge session token (alternative to a Bearer header).")
    principal: StrictStr | None = Field(
        default=None,
        max_length=128,
        description="Who asked, as the HTTP bridge authenticated them; set by the bridge (a caller's own is dropped).",
    )

    def ensure_msg_id(self) -> Envelope:
        return self if self.msg_id else self.model_copy(update={"msg_id": uuid.uuid4()})

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict, without absent optional fields (legacy callers never see them)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"data": self.data}


class Reply(BaseModel):
    """What every caller gets back: ``msg`` is always exactly the table text of ``code``.

    Its constructors validate as ``Reply(...)`` does, through the model's validator itself: ``BaseModel.__init__``
    around it costs four times the validation (one per message on the worker's path)."""

    model_config = ConfigDict(frozen=True)

    code: int
    msg: str
    data: Any = None

    @classmethod
    def ok(cls, data: Any = None) -> Reply:
        return cls.__pydantic_validator__.validate_python({"code": Code.OK, "msg": _OK_MSG, "data": data})

    @classmethod
    def error(cls, code: Code, detail: str, field: str | None = None, **extra: Any) -> Reply:
        data: dict[str, Any] = {"detail": detail}
        if field is not None:
            data["field"] = field
        return cls.__pydantic_validator__.validate_python({"code": code, "msg": code.msg, "data": data | extra})

    @classmethod
    def from_error(cls, exc: KvmError) -> Reply:
        return cls.__pydantic_validator__.validate_python({"code": exc.code, "msg": exc.code.msg, "data": exc.data()})

    @property
    def succeeded(self) -> bool:
        return self.code == Code.OK


_OK_MSG = Code.OK.msg


def parse_envelope(payload: object) -> Envelope:
    """A decoded body as an Envelope; anything else is ``InvalidRequest`` naming the first bad field."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {type(payload).__name__}")
    try:
        return Envelope.__pydantic_validator__.validate_python(payload)  # = model_validate, without its wrapper
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{field}: {first['msg']}", field=field) from None
