"""HTTP basic auth as the original registry does it, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from collections.abc import Mapping

REALM = 'Basic realm="Bosh Registry"'


class Caller(enum.Enum):
    """Who a request comes from, as far as its credentials tell."""

    ANONYMOUS = "anonymous"  # no Authorization header
    ADMIN = "admin"  # a configured user with the right password
    REFUSED = "refused"  # credentials given but wrong or malformed


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """User and password from an ``Authorization: Basic`` header; None when absent or not Basic."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ("", "")  # present but malformed: treated as wrong credentials
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else ("", "")


class BasicAuth:
    """Checks a request's credentials against the configured admin users."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = [(u.encode(), p.encode()) for u, p in users.items()]

    def identify(self, header: str | None) -> Caller:
        """Classify a request by its Authorization header."""
        credentials = parse_basic(header)
        if header and credentials is None:
            return Caller.REFUSED  # another scheme (Bearer, Digest): not ours
        if credentials is None:
            return Caller.ANONYMOUS
        user, password = credentials[0].encode(), credentials[1].encode()
        matched = False
        for known_user, known_password in self._users:
            # Every user is compared, with both parts, so timing does not tell which part was wrong.
            user_ok = hmac.compare_digest(user, known_user)
            password_ok = hmac.compare_digest(password, known_password)
            matched |= user_ok & password_ok
        return Caller.ADMIN if matched else Caller.REFUSED
