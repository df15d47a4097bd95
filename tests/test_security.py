"""Who may read which settings: per-VM credentials, throttling, hashed admin passwords, the audit trail."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import bcrypt
import httpx
import pytest
from sqlalchemy import create_engine

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.audit import AuditLog, query_events
from boshreg.registry.auth import Authenticator, Caller
from boshreg.registry.config import AdminSecret
from boshreg.registry.tables import metadata
from boshreg.registry.throttle import AuthThrottle
from conftest import RegistryLauncher, assert_no_secrets
from support.cli import boshreg
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

SECRET = INSTANCE_SECRET
ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = b'{"agent_id": "a", "mbus": "nats://nats:Mbus-Secret@10.0.0.6:4222"}'


@pytest.fixture
def registry(start_registry: RegistryLauncher) -> RegistryProcess:
    return start_registry(instance_secret=SECRET, auth_throttle={"max_failures": 3, "window": 60, "block": 2})


def url(registry: RegistryProcess, instance_id: str, what: str = "settings") -> str:
    return f"{registry.url}/instances/{instance_id}/{what}"


def vm_auth(instance_id: str, secret: str = SECRET) -> tuple[str, str]:
    return instance_id, instance_token(secret, instance_id)


# --- per-VM credentials --------------------------------------------------------------------------


def test_admin_gets_a_vms_credential_from_the_registry(registry: RegistryProcess) -> None:
    response = httpx.post(url(registry, "vm-1", "credentials"), auth=ADMIN)
    expected = {"status": "ok", "user": "vm-1", "password": instance_token(SECRET, "vm-1"), "generation": 0}
    assert response.json() == expected


def test_an_id_basic_auth_cannot_carry_gets_no_credential(registry: RegistryProcess) -> None:
    response = httpx.post(url(registry, "vm:1", "credentials"), auth=ADMIN)
    assert response.status_code == 400
    assert "basic auth cannot carry ':'" in response.json()["error"]


def test_a_vm_credential_reads_its_own_settings(registry: RegistryProcess) -> None:
    httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=ADMIN)
    response = httpx.get(url(registry, "vm-1"), auth=vm_auth("vm-1"))
    assert response.json() == {"status": "ok", "settings": SETTINGS.decode()}


def test_a_vm_credential_cannot_read_another_vm(registry: RegistryProcess) -> None:
    httpx.put(url(registry, "vm-2"), content=SETTINGS, auth=ADMIN)
    response = httpx.get(url(registry, "vm-2"), auth=vm_auth("vm-1"))
    assert response.status_code == 403
    assert response.json()["status"] == "access_denied"
    assert "Mbus-Secret" not in response.text


@pytest.mark.parametrize(("method", "path"), [("PUT", "settings"), ("DELETE", "settings"), ("POST", "credentials")])
def test_a_vm_credential_cannot_change_anything(registry: RegistryProcess, method: str, path: str) -> None:
    httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=ADMIN)
    response = httpx.request(method, url(registry, "vm-1", path), content=b"{}", auth=vm_auth("vm-1"))
    assert response.status_code == 403
    assert httpx.get(url(registry, "vm-1"), auth=ADMIN).json()["settings"] == SETTINGS.decode()


@pytest.mark.parametrize(
    "password",
    [
        instance_token(SECRET, "vm-1")[:-1],
        instance_token(SECRET, "vm-1") + "A",
        instance_token(SECRET, "vm-2"),
        instance_token("another-secret-0123456789abcdef", "vm-1"),
        "",
    ],
)
def test_forged_or_truncated_tokens_are_refused(registry: RegistryProcess, password: str) -> None:
    assert httpx.get(url(registry, "vm-1"), auth=("vm-1", password)).status_code == 401


def test_credentials_route_needs_admin(registry: RegistryProcess) -> None:
    assert httpx.post(url(registry, "vm-1", "credentials")).status_code == 401


def test_rotating_the_secret_invalidates_every_vm_credential(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/rotate.db"
    first = start_registry(database, instance_secret=SECRET)
    httpx.put(url(first, "vm-1"), content=SETTINGS, auth=ADMIN)
    assert httpx.get(url(first, "vm-1"), auth=vm_auth("vm-1")).status_code == 200
    first.stop()
    rotated = "rotated-secret-0123456789abcdefghij"
    second = start_registry(database, instance_secret=rotated)
    assert httpx.get(url(second, "vm-1"), auth=vm_auth("vm-1")).status_code == 401
    assert httpx.get(url(second, "vm-1"), auth=vm_auth("vm-1", rotated)).status_code == 200


def test_zero_config_keeps_its_instance_secret_in_the_data_dir(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(args=[])
    secret = (tmp_path / ".boshreg" / "instance-secret").read_text().strip()
    password = (tmp_path / ".boshreg" / "admin-password").read_text().strip()
    httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=("admin", password))
    assert httpx.get(url(registry, "vm-1"), auth=vm_auth("vm-1", secret)).status_code == 200
    assert_no_secrets(registry.stderr(), secret, instance_token(secret, "vm-1"))


# --- throttling ----------------------------------------------------------------------------------


def test_repeated_failures_are_throttled_and_recover(registry: RegistryProcess) -> None:
    for _ in range(3):
        assert httpx.get(url(registry, "vm-1"), auth=("admin", "guess")).status_code == 401
    blocked = httpx.get(url(registry, "vm-1"), auth=ADMIN)  # even the right password, while blocked
    assert blocked.status_code == 429
    assert blocked.json()["status"] == "error"
    assert 1 <= int(blocked.headers["retry-after"]) <= 2
    time.sleep(2.1)
    assert httpx.get(url(registry, "vm-1"), auth=ADMIN).status_code == 404


def test_successful_requests_never_count_towards_throttling(registry: RegistryProcess) -> None:
    for _ in range(20):
        assert httpx.get(url(registry, "vm-none"), auth=ADMIN).status_code == 404


def test_throttle_forgets_failures_outside_the_window() -> None:
    clock = [0.0]
    throttle = AuthThrottle(max_failures=3, window=10, block=5, now=lambda: clock[0])
    for moment in (0.0, 6.0, 12.0, 18.0):  # never 3 within 10 s
        clock[0] = moment
        throttle.failed("10.0.0.7")
    assert throttle.retry_after("10.0.0.7") is None
    throttle.failed("10.0.0.7")
    throttle.failed("10.0.0.7")
    assert throttle.retry_after("10.0.0.7") == 5
    clock[0] += 5
    assert throttle.retry_after("10.0.0.7") is None


# --- hashed admin passwords ----------------------------------------------------------------------


def test_admin_password_as_a_bcrypt_hash(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    result = boshreg("hash-password", cwd=tmp_path, env={"BOSHREG_PASSWORD": "Hashed-Adm1n"})
    hashed = result.stdout.strip()
    assert result.returncode == 0
    assert bcrypt.checkpw(b"Hashed-Adm1n", hashed.encode())
    registry = start_registry(password=None, password_hash=hashed)
    assert httpx.put(url(registry, "vm-1"), content=SETTINGS, auth=("admin", "Hashed-Adm1n")).status_code == 200
    started = time.monotonic()
    for _ in range(10):  # remembered after the first check: no bcrypt per request
        assert httpx.get(url(registry, "vm-1"), auth=("admin", "Hashed-Adm1n")).status_code == 200
    assert time.monotonic() - started < 1.5
    assert httpx.get(url(registry, "vm-1"), auth=("admin", "wrong")).status_code == 401
    assert "Hashed-Adm1n" not in (tmp_path / f"registry-{registry.port}.yml").read_text()


def test_remembered_headers_are_known_again_but_a_bcrypt_password_is_held_only_as_a_digest() -> None:
    hashed = bcrypt.hashpw(b"Hashed-Adm1n", bcrypt.gensalt(4)).decode()
    auth = Authenticator(
        {"admin": AdminSecret(password_hash=hashed), "ops": AdminSecret(password="Pl4in")}, INSTANCE_SECRET
    )
    headers = {
        "admin": "Basic " + base64.b64encode(b"admin:Hashed-Adm1n").decode(),
        "ops": "Basic " + base64.b64encode(b"ops:Pl4in").decode(),
        "vm-7": "Basic " + base64.b64encode(f"vm-7:{instance_token(INSTANCE_SECRET, 'vm-7')}".encode()).decode(),
    }
    for header in headers.values():
        assert auth.known(header) is None  # never seen: the full check, and the throttle, decide
        auth.remember(header, auth.identify(header))
    assert {user: auth.known(header) for user, header in headers.items()} == {
        "admin": auth.identify(headers["admin"]),
        "ops": auth.identify(headers["ops"]),
        "vm-7": auth.identify(headers["vm-7"]),
    }
    assert auth.known(headers["vm-7"]).caller is Caller.INSTANCE  # type: ignore[union-attr]
    wrong = "Basic " + base64.b64encode(b"admin:wrong").decode()
    auth.remember(wrong, auth.identify(wrong))  # refused: not remembered
    assert auth.known(wrong) is None
    held = repr(vars(auth))
    assert headers["admin"] not in held
    assert "Hashed-Adm1n" not in held


# --- audit trail ---------------------------------------------------------------------------------


def test_every_read_write_and_delete_is_in_the_audit_trail(registry: RegistryProcess, tmp_path: Path) -> None:
    httpx.put(url(registry, "vm-a"), content=SETTINGS, auth=ADMIN)
    httpx.get(url(registry, "vm-a"), auth=vm_auth("vm-a"))
    httpx.get(url(registry, "vm-a"), auth=vm_auth("vm-b"))  # another VM: 403
    httpx.get(url(registry, "vm-a"))  # anonymous: 401
    httpx.get(url(registry, "vm-a"), auth=("vm-a", "forged"))  # 401
    httpx.delete(url(registry, "vm-a"), auth=ADMIN)
    httpx.get(url(registry, "vm-a"), auth=ADMIN)  # 404
    time.sleep(1.0)  # the writer flushes every 0.5 s
    config = next(tmp_path.glob("registry-*.yml"))
    result = boshreg("events", "--config", str(config), "--instance", "vm-a", "--since", "10m", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [(e["action"], e["credential"], e["status"], e["outcome"]) for e in reversed(json.loads(result.stdout))]
    assert events == [
        ("write", "admin", 200, "ok"),
        ("read", "per-vm", 200, "ok"),
        ("read", "per-vm", 403, "forbidden"),
        ("read", "anonymous", 401, "access_denied"),
        ("read", "refused", 401, "access_denied"),
        ("delete", "admin", 200, "ok"),
        ("read", "admin", 404, "not_found"),
    ]
    text = boshreg("events", "--config", str(config), "--instance", "vm-a", cwd=tmp_path).stdout
    assert " read        vm-a from 127.0.0.1 (per-vm): 403 forbidden" in text


def test_audit_trail_is_bounded_by_count_and_age(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/audit.db")
    metadata.create_all(engine)
    audit = AuditLog(engine, max_age=timedelta(hours=1), max_rows=100)
    for n in range(250):
        audit.record("read", f"vm-{n}", "10.0.0.7", "admin", 200, "ok")
    audit.flush()
    audit.prune()
    kept = query_events(engine, limit=1000)
    assert len(kept) == 100
    assert kept[0].instance_id == "vm-249"
    audit.max_age = timedelta(seconds=0)
    audit.prune()
    assert query_events(engine) == []
    engine.dispose()


def test_events_errors_are_one_line(tmp_path: Path) -> None:
    from support.cli import assert_one_line_error

    assert_one_line_error(boshreg("events", "--since", "yesterday", "--data-dir", ".", cwd=tmp_path), "no registry")
    (tmp_path / ".boshreg").mkdir()
    (tmp_path / ".boshreg" / "registry.db").touch()
    assert_one_line_error(boshreg("events", "--since", "yesterday", cwd=tmp_path), "--since 'yesterday'")
