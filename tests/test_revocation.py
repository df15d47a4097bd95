"""One VM's per-VM credential can be revoked: by deleting its settings or by an admin call, at once in
every worker process and replica, and a VM re-created under the same key gets a new one (issue: #9.6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import URL

from boshreg.bootstrap.credentials import instance_token, token_generation
from conftest import RegistryLauncher
from support.cli import boshreg
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

SECRET = INSTANCE_SECRET
ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = b'{"agent_id": "a-1"}'
READS = 24  # each on a new connection, so that both workers answer (and remember the header) several times
NOTIFY_BOUND = 0.1  # PostgreSQL: a write reaches every worker's cache within this (README, "The read cache")


# --- the credential itself -------------------------------------------------------------------------


def test_generation_zero_is_the_credential_issued_before_generations_existed() -> None:
    assert token_generation(SECRET, "vm-1", instance_token(SECRET, "vm-1")) == 0
    assert "." not in instance_token(SECRET, "vm-1")


@pytest.mark.parametrize("secret", [SECRET, "", "k" * 64, "long-" * 30, "ünïcode-secret"])
@pytest.mark.parametrize("generation", [0, 1, 12])
def test_the_token_is_hmac_sha256_of_the_key_as_the_cpi_side_computes_it(secret: str, generation: int) -> None:
    """Tokens in user data rendered by any version must keep working: the same bytes as the standard's HMAC,
    whatever the secret's length (keys longer than SHA-256's block are hashed first)."""
    message = "vm-7" if generation == 0 else f"vm-7\0{generation}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert instance_token(secret, "vm-7", generation) == (expected if generation == 0 else f"{expected}.{generation}")


def test_each_generation_has_its_own_password_that_names_it() -> None:
    second = instance_token(SECRET, "vm-1", 2)
    assert second.endswith(".2")
    assert token_generation(SECRET, "vm-1", second) == 2
    assert second.split(".")[0] != instance_token(SECRET, "vm-1")


@pytest.mark.parametrize(
    "password",
    [
        instance_token(SECRET, "vm-1") + ".1",  # generation 0's token claiming generation 1
        instance_token(SECRET, "vm-1", 1).replace(".1", ".01"),
        instance_token(SECRET, "vm-1", 1).replace(".1", ".+1"),
        instance_token(SECRET, "vm-1", 1).replace(".1", "."),
        instance_token(SECRET, "vm-1", 3).replace(".3", ".2"),
        instance_token(SECRET, "vm-2", 1),
        instance_token(SECRET, "vm-1", 1) + "1",
    ],
)
def test_a_claimed_generation_the_hmac_does_not_cover_is_refused(password: str) -> None:
    assert token_generation(SECRET, "vm-1", password) is None


# --- against a real `boshreg serve` -----------------------------------------------------------------


def url(registry: RegistryProcess, instance_id: str, what: str = "settings") -> str:
    return f"{registry.url}/instances/{instance_id}/{what}"


def statuses(registry: RegistryProcess, instance_id: str, auth: tuple[str, str], reads: int = READS) -> set[int]:
    """The statuses of ``reads`` GETs, each on a new connection (so that every worker answers some)."""
    return {
        httpx.get(url(registry, instance_id), auth=auth, headers={"Connection": "close"}).status_code
        for _ in range(reads)
    }


def issued(registry: RegistryProcess, instance_id: str) -> tuple[str, str]:
    body = httpx.post(url(registry, instance_id, "credentials"), auth=ADMIN).json()
    return body["user"], body["password"]


def test_revoking_ends_the_credential_in_every_worker_at_once(start_registry: RegistryLauncher) -> None:
    registry = start_registry(instance_secret=SECRET, workers=2)
    assert httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=ADMIN).status_code == 200
    old = ("vm-1", instance_token(SECRET, "vm-1"))
    assert statuses(registry, "vm-1", old) == {200}  # both workers have the answer cached, the header known
    revoked = httpx.delete(url(registry, "vm-1", "credentials"), auth=ADMIN)
    assert revoked.json() == {"status": "ok", "user": "vm-1", "generation": 1}
    assert statuses(registry, "vm-1", old) == {401}
    refusal = httpx.get(url(registry, "vm-1"), auth=old)
    assert "was revoked" in refusal.json()["error"]
    assert refusal.headers["www-authenticate"] == 'Basic realm="Bosh Registry"'
    new = issued(registry, "vm-1")
    assert new == ("vm-1", instance_token(SECRET, "vm-1", 1))
    assert statuses(registry, "vm-1", new) == {200}
    assert httpx.get(url(registry, "vm-1"), auth=ADMIN).status_code == 200  # the settings stay
    # The revoked credential is not a guess: refusing it never blocks the address for the new one.
    assert statuses(registry, "vm-1", old, reads=15) == {401}
    assert statuses(registry, "vm-1", new, reads=4) == {200}


def test_a_vm_recreated_under_its_name_gets_a_new_credential_and_the_old_reads_nothing(
    start_registry: RegistryLauncher,
) -> None:
    registry = start_registry(instance_secret=SECRET, workers=2)
    httpx.put(url(registry, "vm-reused"), content=SETTINGS, auth=ADMIN)
    first = issued(registry, "vm-reused")
    assert statuses(registry, "vm-reused", first) == {200}
    assert httpx.delete(url(registry, "vm-reused"), auth=ADMIN).status_code == 200
    assert statuses(registry, "vm-reused", first, reads=6) == {401}  # not 404: the credential is what is wrong
    httpx.put(url(registry, "vm-reused"), content=b'{"agent_id": "a-2"}', auth=ADMIN)
    second = issued(registry, "vm-reused")
    assert second != first
    assert statuses(registry, "vm-reused", first) == {401}
    assert statuses(registry, "vm-reused", second) == {200}


def test_replicas_on_a_networked_database_refuse_a_revoked_credential_within_the_cache_bound(
    server_database_url: URL, start_registry: RegistryLauncher
) -> None:
    """PostgreSQL: within NOTIFY's delivery; MySQL: within http.cache_seconds (README, "The read cache")."""
    postgres = server_database_url.get_backend_name() == "postgresql"
    bound = NOTIFY_BOUND if postgres else 0.5
    first = start_registry(server_database_url, instance_secret=SECRET, cache_seconds=0.5, workers=2)
    second = start_registry(server_database_url, instance_secret=SECRET, cache_seconds=0.5, workers=2)
    httpx.put(url(first, "vm-net"), content=SETTINGS, auth=ADMIN)
    old = issued(first, "vm-net")
    assert statuses(second, "vm-net", old) == {200}
    assert httpx.delete(url(first, "vm-net", "credentials"), auth=ADMIN).json()["generation"] == 1
    assert statuses(first, "vm-net", old, reads=6) == {401}  # the revoking process: at once
    time.sleep(bound + (0 if postgres else 0.2))
    assert statuses(second, "vm-net", old) == {401}
    assert statuses(second, "vm-net", issued(second, "vm-net")) == {200}


def test_only_the_admin_may_revoke(start_registry: RegistryLauncher) -> None:
    registry = start_registry(instance_secret=SECRET)
    httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=ADMIN)
    own = ("vm-1", instance_token(SECRET, "vm-1"))
    assert httpx.delete(url(registry, "vm-1", "credentials"), auth=own).status_code == 403
    assert httpx.delete(url(registry, "vm-1", "credentials")).status_code == 401
    assert httpx.delete(url(registry, "vm:1", "credentials"), auth=ADMIN).status_code == 400
    assert statuses(registry, "vm-1", own, reads=2) == {200}


def test_the_cli_revokes_and_renders_the_next_generation_offline(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(instance_secret=SECRET)
    endpoint = registry.url.replace("://", f"://admin:{ADMIN_PASSWORD}@")
    httpx.put(url(registry, "vm-cli"), content=SETTINGS, auth=ADMIN)
    result = boshreg("credentials", "revoke", "vm-cli", "--endpoint", endpoint, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "revoked the per-VM credential of vm-cli; its credentials are now of generation 1\n"
    (tmp_path / "secret").write_text(SECRET + "\n")
    rendered = boshreg(
        "userdata", "render", "--name", "vm-cli", "--endpoint", endpoint,
        "--instance-secret-file", "secret", "--generation", "1", "--json", cwd=tmp_path,
    )  # fmt: skip
    user_data_endpoint = json.loads(rendered.stdout)["user_data"]["registry"]["endpoint"]
    password = instance_token(SECRET, "vm-cli", 1)
    assert user_data_endpoint == f"http://vm-cli:{password}@127.0.0.1:{registry.port}"
    assert statuses(registry, "vm-cli", ("vm-cli", password), reads=2) == {200}
    without_secret = boshreg(
        "userdata", "render", "--name", "vm-cli", "--endpoint", endpoint, "--generation", "1", cwd=tmp_path
    )
    assert without_secret.returncode == 2
    assert "--generation needs --instance-secret-file" in without_secret.stderr
