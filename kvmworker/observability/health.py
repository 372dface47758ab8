"""The one shape of a health answer, for the worker's health port and for the bridge alike.

``/healthz`` and ``/readyz`` answer HTTP 200 ``{"status": "ok"}``, or HTTP 503
``{"status": "unavailable", "reason": "<why, in words>"}``: a probe needs only the status code,
an operator with curl reads the reason.
"""

from __future__ import annotations

from typing import Any

OK = "ok"
UNAVAILABLE = "unavailable"

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Health",
    "required": ["status"],
    "properties": {
        "status": {"enum": [OK, UNAVAILABLE]},
        "reason": {"type": "string", "description": "Why it is unavailable; absent when ok."},
    },
    "additionalProperties": False,
}


def health_answer(problem: str | None) -> tuple[int, dict[str, str]]:
    """(HTTP status, body) for a check that found ``problem`` (None: healthy)."""
    if problem is None:
        return 200, {"status": OK}
    return 503, {"status": UNAVAILABLE, "reason": problem}
