"""The access policy, row by row as the README's security table states it (``registry/access.py``)."""

from __future__ import annotations

import pytest

from boshreg.registry.access import (
    ACTIONS,
    CREDENTIALS,
    DELETE,
    EVENTS,
    FLEET,
    READ,
    REVOKE,
    WRITE,
    Decision,
    decide,
)
from boshreg.registry.auth import Caller

ALLOW, CHECK, E401, E403 = Decision.ALLOW, Decision.CHECK_ADDRESS, Decision.UNAUTHENTICATED, Decision.FORBIDDEN

# caller, user, anonymous reads, cloud:
#   GET own, GET another VM's, PUT, DELETE, POST credentials, DELETE credentials, GET events, GET fleet
TABLE = [
    ("admin", Caller.ADMIN, "admin", False, False, (ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW)),
    (
        "additional user",
        Caller.ADMIN,
        "director",
        False,
        False,
        (ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW),
    ),
    ("per-VM credential", Caller.INSTANCE, "vm-1", False, False, (ALLOW, E403, E403, E403, E403, E403, E403, E403)),
    ("none, with a cloud", Caller.ANONYMOUS, None, False, True, (CHECK, CHECK, E401, E401, E401, E401, E401, E401)),
    ("none, anonymous reads", Caller.ANONYMOUS, None, True, False, (ALLOW, ALLOW, E401, E401, E401, E401, E401, E401)),
    ("none, otherwise", Caller.ANONYMOUS, None, False, False, (E401, E401, E401, E401, E401, E401, E401, E401)),
    ("wrong credentials", Caller.REFUSED, "admin", True, True, (E401, E401, E401, E401, E401, E401, E401, E401)),
]


@pytest.mark.parametrize(
    ("row", "caller", "user", "anonymous_reads", "cloud", "expected"), TABLE, ids=[r[0] for r in TABLE]
)
def test_each_row_of_the_security_table(
    row: str,
    caller: Caller,
    user: str | None,
    anonymous_reads: bool,
    cloud: bool,
    expected: tuple[Decision, ...],
) -> None:
    requests = [
        (READ, "vm-1"),
        (READ, "vm-2"),
        (WRITE, "vm-1"),
        (DELETE, "vm-1"),
        (CREDENTIALS, "vm-1"),
        (REVOKE, "vm-1"),
        (EVENTS, "vm-1"),
        (FLEET, ""),
    ]
    decided = tuple(
        decide(caller, user, action, key, anonymous_reads=anonymous_reads, address_check=cloud).decision
        for action, key in requests
    )
    assert decided == expected, row


def test_every_refusal_says_why() -> None:
    for caller in Caller:
        for action in ACTIONS:
            access = decide(caller, "vm-1", action, "vm-2")
            assert (access.decision is Decision.ALLOW) == (access.reason == ""), (caller, action)


def test_a_vm_reading_another_is_told_whose_credential_it_used() -> None:
    assert decide(Caller.INSTANCE, "vm-1", READ, "vm-2").reason == (
        "the credential of vm-1 may not read another instance's settings"
    )
