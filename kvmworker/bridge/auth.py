"""Who is calling the bridge, and what they may reach.

Two ways in, either or both configured:

- **users** (``UserHandler.login`` → a token): argon2 hashes, expiring tokens, throttled logins, and
  per-user grants (hosts and ``Handler.command`` patterns, see ``users.py``). A token is checked against
  the users file on every request: removing the user or changing the password ends it at once.
- **the local token** (``LocalToken``): one random bearer token that ``kvmworker serve`` writes to a
  0600 file at start; whoever can read the file (root) may do anything.

An unknown user costs the same argon2 verification as a known one (against a dummy hash made with
the same parameters), so that the time taken does not tell whether a user exists. Verification is
CPU-bound and slow on purpose: callers run ``login`` on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kvmworker.bridge.throttle import RateLimit, Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import FULL_ACCESS, Grants, UsersFile
from kvmworker.protocol.errors import LoginFailed, Unauthenticated, UnknownUser

LOCAL_PRINCIPAL = "local:token-file"  # a colon: no username can be spelt like it


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name goes into the envelope, the journal and the logs."""

    name: str
    grants: Grants

    def authorise(self, host: str, handler: str, command: str) -> None:
        """20004 naming what is refused, unless the grants allow it."""
        refused = self.grants.refusal(host, handler, command)
        if refused is not None:
            raise Unauthenticated(
                f"user {self.name!r} is not allowed {refused}",
                field="host" if refused.startswith("host") else "command",
            )


class LocalToken:
    """The one token of the embedded default: whoever can read its file is root on this machine anyway."""

    def __init__(self, token: str, path: str = ""):
        self._digest = _digest(token)
        self.path = path

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(_digest(token), self._digest)


class Authenticator:
    def __init__(
        self,
        users: UsersFile | None,
        tokens: TokenStore,
        throttle: Throttle | None = None,
        *,
        local: LocalToken | None = None,
        login_rate: RateLimit | None = None,
    ):
        self._users = users
        self._local = local
        self._tokens = tokens
        self._throttle = throttle or Throttle()
        self._login_rate = login_rate or RateLimit()
        self._hasher: PasswordHasher = users.hasher if users else PasswordHasher()
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16)) if users else ""

    def login(self, username: str, password: str, address: str = "") -> dict[str, object]:
        """A token for a right password; 10002 unknown user, 10001 wrong password or locked out. Blocking."""
        if self._users is None:
            raise UnknownUser(
                f"this bridge has no users; send the token from {self._local.path if self._local else 'its file'}"
                " as 'Authorization: Bearer <token>'",
                field="username",
            )
        keys = (f"user:{username}", f"addr:{address}")
        self._refuse_while_throttled(keys)
        record = self._users.record(username)
        # the same verification either way: an unknown user must not answer faster than a wrong password
        matches = self._verify(record.hash if record else self._dummy_hash, password)
        if record is None or not matches:
            self._throttle.failed(*keys)
            self._login_rate.take()
            if record is None:
                raise UnknownUser(f"no user named {username!r}", field="username")
            raise LoginFailed("wrong password", field="password")
        self._throttle.succeeded(keys[0])
        return {"token": self._tokens.issue(username, _stamp(record.hash)), "expires_in": round(self._tokens.ttl)}

    def principal(self, token: str | None) -> Principal:
        """The caller a token stands for; 20004 if none."""
        if token and self._local is not None and self._local.matches(token):
            return Principal(LOCAL_PRINCIPAL, FULL_ACCESS)
        session = self._tokens.session_of(token) if token and self._users is not None else None
        if session is not None:
            name, stamp = session
            record = self._users.record(name) if self._users else None
            if record is not None and _stamp(record.hash) == stamp:
                return Principal(name, record.grants)
            self._tokens.revoke(token or "")  # removed, or the password changed since the login
        raise Unauthenticated(
            "a valid token is required: " + self._how_to_get_one()
            if token is None
            else "the token is unknown, has expired, or its user was removed or changed password: "
            + self._how_to_get_one()
        )

    def logout(self, token: str | None) -> None:
        self.principal(token)
        self._tokens.revoke(token or "")

    def _refuse_while_throttled(self, keys: tuple[str, str]) -> None:
        wait = max(self._throttle.retry_after(*keys), self._login_rate.retry_after())
        if wait > 0:
            retry = math.ceil(wait)
            raise LoginFailed(f"too many failed logins; retry in {retry} s", extra={"retry_after": retry})

    def _how_to_get_one(self) -> str:
        ways = []
        if self._users is not None:
            ways.append("log in with UserHandler.login")
        if self._local is not None:
            ways.append(f"send the token from {self._local.path or 'the token file'} as 'Authorization: Bearer …'")
        return " or ".join(ways)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _stamp(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()
