"""Login at the bridge (``UserHandler.login``/``logout``): argon2 hashes, expiring tokens, throttling.

An unknown user costs the same argon2 verification as a known one (against a dummy hash made with
the same parameters), so that the time taken does not tell whether a user exists. Verification is
CPU-bound and slow on purpose: callers run ``login`` on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import math
import secrets
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from kvmworker.bridge.throttle import Throttle
from kvmworker.bridge.tokens import TokenStore
from kvmworker.bridge.users import UsersFile
from kvmworker.protocol.errors import LoginFailed, Unauthenticated, UnknownUser
from kvmworker.protocol.types import string_schema

USER_HANDLER = "UserHandler"


def _text_or_number(min_length: int, max_length: int) -> dict:
    """A number is read as its text (``coerce_numbers_to_str``); a bool is not a number here."""
    return {"anyOf": [string_schema(min_length=min_length, max_length=max_length), {"type": "number"}]}


class LoginData(BaseModel):
    # legacy callers send numeric passwords as numbers now and then
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    username: Annotated[str, Field(min_length=1, max_length=256), WithJsonSchema(_text_or_number(1, 256))]
    password: Annotated[str, Field(max_length=1024), WithJsonSchema(_text_or_number(0, 1024))]


class LogoutData(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Authenticator:
    def __init__(self, users: UsersFile, tokens: TokenStore, throttle: Throttle | None = None):
        self._users = users
        self._hasher: PasswordHasher = users.hasher
        self._tokens = tokens
        self._throttle = throttle or Throttle()
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    def login(self, username: str, password: str, address: str = "") -> dict[str, object]:
        """A token for a right password; 10002 unknown user, 10001 wrong password or locked out. Blocking."""
        keys = (f"user:{username}", f"addr:{address}")
        wait = self._throttle.retry_after(*keys)
        if wait > 0:
            retry = math.ceil(wait)
            raise LoginFailed(f"too many failed logins; retry in {retry} s", extra={"retry_after": retry})
        stored = self._users.hash_of(username)
        matches = self._verify(stored or self._dummy_hash, password)
        if stored is None:
            self._throttle.failed(*keys)
            raise UnknownUser(f"no user named {username!r}", field="username")
        if not matches:
            self._throttle.failed(*keys)
            raise LoginFailed("wrong password", field="password")
        self._throttle.succeeded(keys[0])
        return {"token": self._tokens.issue(username), "expires_in": round(self._tokens.ttl)}

    def user_of(self, token: str | None) -> str:
        user = self._tokens.user_of(token) if token else None
        if user is None:
            raise Unauthenticated(
                "a valid token is required: log in with UserHandler.login"
                if token is None
                else "the token is unknown or has expired: log in again"
            )
        return user

    def logout(self, token: str | None) -> None:
        self.user_of(token)
        self._tokens.revoke(token or "")

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
