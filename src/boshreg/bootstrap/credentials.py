"""Per-VM read credentials: user = the VM's registry key, password = HMAC-SHA256(secret, key).

The registry can check them without storing anything per VM, the CPI side can compute them when it
knows the secret, and rotating the secret invalidates every one of them at once. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_BYTES = 32
USER_NAME_SEPARATOR = ":"  # basic auth's user:password: a user name cannot hold one


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


def instance_token(secret: str, instance_id: str) -> str:
    """The password of ``instance_id``'s read credential (URL-safe base64, no padding)."""
    digest = hmac.new(secret.encode("utf-8"), instance_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_matches(secret: str, instance_id: str, token: str) -> bool:
    """Constant-time check of a presented token."""
    return hmac.compare_digest(instance_token(secret, instance_id).encode(), token.encode("utf-8", "replace"))
