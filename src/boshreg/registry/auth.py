"""Who a request comes from: an admin (the original's basic auth), one VM (its per-VM credential), or
nobody. Every comparison is constant-time.

Admin passwords may be configured as bcrypt hashes. A bcrypt check costs a fifth of a second by design,
so a password that passed once is remembered (as a keyed digest, never in clear) and later requests
with it cost no more than a plain comparison.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import bcrypt

from boshreg.bootstrap.credentials import token_generation
from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.registry.config import AdminSecret

REALM = 'Basic realm="Bosh Registry"'
_REMEMBERED_MAX = 1024


class Caller(enum.Enum):
    """The kinds of caller, as the audit trail records them."""

    ANONYMOUS = "anonymous"  # no Authorization header
    ADMIN = "admin"  # a configured user with the right password
    INSTANCE = "per-vm"  # a VM's own read credential
    REFUSED = "refused"  # credentials given but wrong or malformed


@dataclass(frozen=True)
class Identity:
    caller: Caller
    user: str | None = None
    generation: int = 0  # a VM's credential: the generation it was issued for (the store knows the current one)


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


def hash_password(password: str) -> str:
    """A bcrypt hash for http.password_hash."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")


class Authenticator:
    """Checks a request's credentials against the admin users and the instance secret."""

    def __init__(self, admins: Mapping[str, AdminSecret], instance_secret: str | None) -> None:
        self._plain = [(u.encode(), s.password.encode()) for u, s in admins.items() if s.password is not None]
        self._hashed = {u: s.password_hash.encode() for u, s in admins.items() if s.password_hash is not None}
        self._instance_secret = instance_secret
        self._plain_users = {u for u, s in admins.items() if s.password is not None}
        # The decoy has the cost of the configured hashes: an unknown user takes as long as a wrong password.
        rounds = min((int(h[4:6]) for h in self._hashed.values() if h[4:6].isdigit()), default=12)
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds)) if self._hashed else b""
        self._remember_key = secrets.token_bytes(32)
        self._remembered: set[bytes] = set()
        # Authorization headers that proved themselves. A header with a bcrypt-checked password is kept as a
        # keyed digest only; the others (a VM's token, a plain admin's password) are kept as they came: the
        # process holds what derives them anyway (the instance secret, the plain password), and a lookup by
        # the header itself saves a keyed digest per read (~0.6 µs of a cached read's ~10).
        self._known: dict[bytes, Identity] = {}
        self._known_headers: dict[str, Identity] = {}

    def known(self, header: str) -> Identity | None:
        """The identity this exact header proved before (an admin or a VM), without checking it again.

        The hot read costs a digest and a lookup instead of a parse and an HMAC or bcrypt; only headers that
        passed are remembered, so a wrong one always takes the full path (and the throttle).
        """
        found = self._known_headers.get(header)
        if found is None and self._known:
            found = self._known.get(self._header_digest(header))
        return found

    def remember(self, header: str, identity: Identity) -> None:
        """Remember a header that identified an admin or a VM."""
        if identity.caller not in (Caller.ADMIN, Caller.INSTANCE):
            return
        if identity.caller is Caller.ADMIN and identity.user in self._hashed:
            if len(self._known) >= _REMEMBERED_MAX * 16:
                self._known.clear()
            self._known[self._header_digest(header)] = identity
            return
        if len(self._known_headers) >= _REMEMBERED_MAX * 16:
            self._known_headers.clear()
        self._known_headers[header] = identity

    def _header_digest(self, header: str) -> bytes:
        return hashlib.blake2b(
            header.encode("utf-8", "surrogateescape"), key=self._remember_key, digest_size=16
        ).digest()

    def needs_hash_check(self, header: str | None) -> bool:
        """True when identifying this request means a slow bcrypt check (run it off the event loop)."""
        return self.needs_hash_check_of(parse_basic(header))

    def needs_hash_check_of(self, credentials: tuple[str, str] | None) -> bool:
        """``needs_hash_check`` for a header already parsed (the hot path parses it once)."""
        if credentials is None or not self._hashed:
            return False
        user, password = credentials
        if user in self._hashed:
            return self._digest(user, password) not in self._remembered
        return user not in self._plain_users and self._instance_generation(user, password) is None  # the decoy

    def identify(self, header: str | None) -> Identity:
        """Classify a request by its Authorization header.

        An unknown user costs what a wrong password does (a decoy bcrypt check when admins are hashed),
        so the time of a refusal does not tell which user names exist.
        """
        return self.identify_of(bool(header), parse_basic(header))

    def identify_of(self, header_present: bool, credentials: tuple[str, str] | None) -> Identity:
        """``identify`` for a header already parsed (the hot path parses it once)."""
        if header_present and credentials is None:
            return Identity(Caller.REFUSED)  # another scheme (Bearer, Digest): not ours
        if credentials is None:
            return Identity(Caller.ANONYMOUS)
        user, password = credentials
        if user in self._plain_users or user in self._hashed:
            return Identity(Caller.ADMIN, user) if self._is_admin(user, password) else Identity(Caller.REFUSED, user)
        generation = self._instance_generation(user, password)
        if generation is not None:
            return Identity(Caller.INSTANCE, user, generation)
        if self._hashed:
            bcrypt.checkpw(password.encode(), self._decoy)
        return Identity(Caller.REFUSED, user)

    def _instance_generation(self, user: str, password: str) -> int | None:
        """The generation of a valid per-VM credential, or None when this is not one."""
        if self._instance_secret is None or REGISTRY_KEY.fullmatch(user) is None:
            return None
        return token_generation(self._instance_secret, user, password)

    def _is_admin(self, user: str, password: str) -> bool:
        presented_user, presented_password = user.encode(), password.encode()
        matched = False
        for known_user, known_password in self._plain:
            # Every user is compared, with both parts, so timing does not tell which part was wrong.
            user_ok = hmac.compare_digest(presented_user, known_user)
            password_ok = hmac.compare_digest(presented_password, known_password)
            matched |= user_ok & password_ok
        known_hash = self._hashed.get(user)
        if known_hash is not None:
            digest = self._digest(user, password)
            if digest in self._remembered:
                return True
            if bcrypt.checkpw(presented_password, known_hash):
                if len(self._remembered) >= _REMEMBERED_MAX:
                    self._remembered.clear()
                self._remembered.add(digest)
                return True
        return matched

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._remember_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
