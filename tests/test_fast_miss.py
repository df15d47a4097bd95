"""Settings reads the cache cannot answer are read without the ASGI app (issue #10): in line on SQLite,
awaited on the event loop on PostgreSQL (MySQL's go through the app). Every rule of the full path holds
there too: who may read what, the throttle, revocation, 404, 400, the audit trail.

The cache is off in these registries, so every read takes that road unless it must go the full way.
"""

from __future__ import annotations

import time

import httpx
from sqlalchemy import URL

from boshreg.bootstrap.credentials import instance_token
from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = '{"agent_id":"a-1","env":{"note":"é"}}'
WAIT_SECONDS = 10.0


def url(registry: RegistryProcess, instance_id: str, what: str = "settings") -> str:
    return f"{registry.url}/instances/{instance_id}/{what}"


def own(instance_id: str) -> tuple[str, str]:
    return (instance_id, instance_token(INSTANCE_SECRET, instance_id))


def test_a_read_without_the_cache_keeps_every_rule(database_url: URL, start_registry: RegistryLauncher) -> None:
    registry = start_registry(
        database_url,
        instance_secret=INSTANCE_SECRET,
        cache_bytes=0,
        auth_throttle={"max_failures": 3, "window": 60, "block": 60},
    )
    for name in ("vm-a", "vm-b"):
        assert httpx.put(url(registry, name), content=SETTINGS, auth=ADMIN).status_code == 200

    with httpx.Client() as client:  # one connection: the second read reuses the header the first proved
        for _ in range(2):
            read = client.get(url(registry, "vm-a"), auth=own("vm-a"))
            assert (read.status_code, read.json()) == (200, {"status": "ok", "settings": SETTINGS})
            assert read.headers["content-type"] == "application/json"
    assert httpx.get(url(registry, "vm-b"), auth=own("vm-a")).status_code == 403  # another VM's settings
    assert httpx.get(url(registry, "vm-a")).status_code == 401  # no credentials
    assert httpx.get(url(registry, "vm-none"), auth=ADMIN).json()["status"] == "not_found"
    assert httpx.get(url(registry, "vm a"), auth=ADMIN).status_code == 400  # not a registry key

    assert httpx.delete(url(registry, "vm-a", "credentials"), auth=ADMIN).status_code == 200
    revoked = httpx.get(url(registry, "vm-a"), auth=own("vm-a"))
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]

    statuses = [httpx.get(url(registry, "vm-b"), auth=("vm-b", "not-its-token")).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]  # the throttle counts refusals the in-line road passed on
    assert httpx.get(url(registry, "vm-b"), auth=("vm-b", "not-its-token")).status_code == 429

    expected = {("per-vm", 200, "ok"), ("anonymous", 401, "access_denied"), ("per-vm", 401, "revoked")}
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # the trail: the two reads counted (one event, unless a flush fell between them), each refusal
        events = httpx.get(url(registry, "vm-a", "events"), auth=ADMIN).json()["events"]
        kinds = {(e["credential"], e["status"], e["outcome"]) for e in events if e["action"] == "read"}
        if kinds == expected or time.monotonic() > deadline:  # each worker's writer flushes on its own clock
            break
        time.sleep(0.2)
    reads = [e for e in events if e["action"] == "read" and e["status"] == 200]
    assert {e["credential"] for e in reads} == {"per-vm"}
    assert sum(e["count"] for e in reads) == 2
    assert kinds == expected
