"""The operator's filters over the journal, as one SQL WHERE clause with its parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Query:
    handler: str | None = None
    command: str | None = None
    codes: tuple[int, ...] = ()
    since: float | None = None
    until: float | None = None
    msg_id: str | None = None
    text: str | None = None
    state: str | None = None
    limit: int | None = None
    newest_first: bool = True


def where_clause(query: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("handler", query.handler), ("command", query.command), ("state", query.state)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.codes:
        clauses.append(f"code IN ({','.join('?' * len(query.codes))})")
        params.extend(query.codes)
    if query.since is not None:
        clauses.append("received_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("received_at <= ?")
        params.append(query.until)
    if query.msg_id:
        clauses.append("msg_id LIKE ? ESCAPE '\\'")
        params.append(_like_prefix(query.msg_id))
    if query.text:
        clauses.append("(envelope LIKE ? ESCAPE '\\' OR reply LIKE ? ESCAPE '\\')")
        params.extend([f"%{_escape_like(query.text)}%"] * 2)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _like_prefix(prefix: str) -> str:
    return _escape_like(prefix) + "%"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
