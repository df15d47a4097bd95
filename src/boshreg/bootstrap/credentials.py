"""Per-VM read credentials: user = the VM's registry key, password = HMAC-SHA256(secret, key, generation).

The registry can check them without storing a secret per VM, the CPI side can compute them when it
knows the secret (and the instance's generation), and rotating the secret invalidates every one of them
at once. One VM's credential is revoked by raising its generation (the registry stores one number per
instance): the password of generation 0 is the HMAC of the key alone, as before generations existed, so
user data rendered then keeps working; later generations carry their number, ``<token>.<generation>``,
so the registry can check the HMAC before it looks anything up. Standard library only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

SECRET_BYTES = 32
USER_NAME_SEPARATOR = ":"  # basic auth's user:password: a user name cannot hold one
_GENERATION_SEPARATOR = "."  # not in URL-safe base64, so the token ends where it starts
_MAX_GENERATION_DIGITS = 18


def generate_secret() -> str:
    """A new instance secret: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(SECRET_BYTES)


def credential_problem(instance_id: str) -> str | None:
    """Why ``instance_id`` cannot have a per-VM credential, or None.

    The credential's user name is the instance id, and basic auth splits ``user:password`` at the first
    ``:``: an id with one would be sent as another user, so the credential could never work.
    """
    if USER_NAME_SEPARATOR in instance_id:
        return (
            f"{instance_id!r} cannot have a per-VM credential: basic auth cannot carry ':' in a user name; "
            "name the VM without ':' or give it the admin credential"
        )
    return None


def instance_token(secret: str, instance_id: str, generation: int = 0) -> str:
    """The password of ``instance_id``'s read credential of ``generation`` (URL-safe base64, no padding)."""
    if generation < 0:
        raise ValueError("a credential generation is a whole number from 0")
    message = instance_id if generation == 0 else f"{instance_id}\0{generation}"  # ids never hold NUL
    keyed = _keyed(secret).copy()
    keyed.update(message.encode("utf-8"))
    digest = keyed.digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return token if generation == 0 else f"{token}{_GENERATION_SEPARATOR}{generation}"


@functools.lru_cache(maxsize=4)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``secret``, to be copied per token (the standard library's own way to share a
    key): keying one per token (the digest looked up, the key's padded blocks hashed) cost 2.1-2.4 µs against
    1.4 for a copy, and far more in the server, where every read with a header not seen before checks a token.
    Never updated itself, so a copy from any thread starts from the key alone. A few secrets at once: the
    registry's, and in tests and tools another now and then."""
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)


def token_generation(secret: str, instance_id: str, password: str) -> int | None:
    """The generation a presented password is a valid credential of, or None when it is not one.

    Only the HMAC is checked here (constant time); whether that generation is still the instance's
    current one is the registry's to say.
    """
    _, separator, number = password.partition(_GENERATION_SEPARATOR)
    generation = 0
    if separator:
        if not (number.isascii() and number.isdigit() and len(number) <= _MAX_GENERATION_DIGITS) or number[0] == "0":
            return None
        generation = int(number)
    expected = instance_token(secret, instance_id, generation).encode()
    return generation if hmac.compare_digest(expected, password.encode("utf-8", "replace")) else None
