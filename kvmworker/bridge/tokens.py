"""Session tokens: random, expiring, revocable; only their SHA-256 is kept in memory.

Each token remembers the password hash its user had when it was issued (``stamp``): the caller checks
it against the users file on every request, so a token dies with its user's removal or password change.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable


class TokenStore:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_tokens: int = 100_000):
        self.ttl = ttl
        self._clock = clock
        self._max_tokens = max_tokens
        self._sessions: dict[str, tuple[str, float, str]] = {}  # sha256(token) → (username, expires at, stamp)
        self._lock = threading.Lock()

    def issue(self, username: str, stamp: str = "") -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._sessions) >= self._max_tokens:
                self._prune()
            self._sessions[_digest(token)] = (username, self._clock() + self.ttl, stamp)
        return token

    def user_of(self, token: str) -> str | None:
        """The user a live token belongs to, else None."""
        session = self.session_of(token)
        return session[0] if session else None

    def session_of(self, token: str) -> tuple[str, str] | None:
        """(user, stamp at issue) of a live token, else None."""
        key = _digest(token)
        with self._lock:
            session = self._sessions.get(key)
            if session and session[1] <= self._clock():
                del self._sessions[key]
                session = None
        return (session[0], session[2]) if session else None

    def revoke(self, token: str) -> bool:
        with self._lock:
            return self._sessions.pop(_digest(token), None) is not None

    def _prune(self) -> None:
        now = self._clock()
        live = {k: v for k, v in self._sessions.items() if v[1] > now}
        # still full of live sessions: the oldest go, so that a login never fails for lack of room
        ordered = sorted(live.items(), key=lambda item: item[1][1])
        self._sessions = dict(ordered[len(ordered) // 10 :] if len(ordered) >= self._max_tokens else ordered)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
