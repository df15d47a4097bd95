"""The names the registry files settings under: one rule for the registry, the CPI side and the agent.

The registry key is the server name on OpenStack and the instance id on AWS. A name the registry
would refuse must be refused when the user data is rendered, not discovered when the VM boots.
"""

from __future__ import annotations

import re

REGISTRY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,255}")
RULE = "1 to 255 characters of letters, digits and . _ : -"


def registry_key_problem(key: str) -> str | None:
    """Why the registry would refuse ``key``, or None when it is a valid registry key."""
    if REGISTRY_KEY.fullmatch(key):
        return None
    shown = key if len(key) <= 64 else key[:64] + "..."
    return f"invalid instance id {shown!r}: use {RULE}"
