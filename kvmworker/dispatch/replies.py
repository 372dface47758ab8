"""The one place where any exception becomes a ``{code, msg, data}`` reply."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.errors import ERROR_FOR_CODE, KvmError
from kvmworker.protocol.types import code_of_error_type

log = logging.getLogger("kvmworker.dispatch")


def reply_for_exception(
    exc: BaseException,
    *,
    invalid_code: Code = Code.INVALID_REQUEST,
    context: str = "",
    expected_level: int = logging.WARNING,
) -> Reply:
    """Expected errors are logged at ``expected_level`` without a traceback; anything else is 99999 with one.

    A caller whose every reply is logged anyway (the worker's command line) passes DEBUG, so that one
    refusal is one warning.
    """
    if isinstance(exc, ValidationError):
        exc = invalid_data_error(exc, invalid_code)
    if isinstance(exc, KvmError):
        log.log(expected_level, "%s%s → %d: %s", context, type(exc).__name__, exc.code, exc.detail)
        return Reply.from_error(exc)
    log.exception("%sunexpected error", context, exc_info=exc)
    return Reply.error(Code.INTERNAL_ERROR, f"unexpected {type(exc).__name__} inside the worker; see its log")


def invalid_data_error(exc: ValidationError, default_code: Code) -> KvmError:
    """The first validation error, with its field path; a coded error type chooses its own code."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    code = code_of_error_type(first["type"]) or default_code
    detail = first["msg"] if field is None else f"{field}: {first['msg']}"
    return ERROR_FOR_CODE[code](detail, field=field)
