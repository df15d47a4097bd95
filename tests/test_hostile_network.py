"""The registry on a hostile network: an audit trail that cannot be poisoned or flooded away, private files,
and input that cannot make it answer 500, redirect, or tell strangers about its database."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import httpx
import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import URL

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.audit import (
    BATCH_EVENTS,
    REFUSALS_WINDOW,
    AuditLog,
    Event,
    escape_id,
    printable,
    query_events,
)
from boshreg.registry.auth import Authenticator, Caller
from boshreg.registry.config import AdminSecret, DbConfig
from boshreg.registry.engine import build_engine
from boshreg.registry.store import SettingsStore
from boshreg.registry.tables import registry_events
from boshreg.registry.throttle import AuthThrottle
from conftest import RegistryLauncher
from support.cli import boshreg
from support.proxy import TcpProxy
from support.registry import ADMIN_PASSWORD, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)


def events_of(url: URL | str) -> list[Event]:
    engine = create_engine(url)
    try:
        return query_events(engine, limit=10_000)
    finally:
        engine.dispose()


def test_ids_are_stored_exactly_but_escaped() -> None:
    assert escape_id("vm-1") == "vm-1"
    assert escape_id("x\x00y\n\\z\x1b[31m") == "x\\x00y\\x0a\\\\z\\x1b[31m"
    assert printable("forged\n2026-01-01T00:00:00Z write vm-1") == "forged\\x0a2026-01-01T00:00:00Z write vm-1"


def test_a_nul_byte_in_an_id_does_not_stop_the_trail(
    server_database_url: URL, start_registry: RegistryLauncher
) -> None:
    registry = start_registry(server_database_url)
    assert httpx.get(f"{registry.url}/instances/x%00/settings").status_code in (400, 401)
    assert (
        httpx.put(f"{registry.url}/instances/vm-after/settings", content=b'{"agent_id":"a"}', auth=ADMIN).status_code
        == 200
    )
    registry.stop()  # writes what is queued
    ids = [event.instance_id for event in events_of(server_database_url)]
    assert "vm-after" in ids
    assert "x\\x00" in ids


def test_one_event_the_database_refuses_is_dropped_alone(server_database_url: URL) -> None:
    store = SettingsStore(create_engine(server_database_url))
    store.ensure_schema()
    audit = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=1000)
    now = datetime.now(UTC)
    poison = Event(now, "read", "x\x00", "10.0.0.1", "anonymous", 401, "access_denied")  # not escaped on purpose
    good = [Event(now, "write", f"vm-{n}", "10.0.0.1", "admin", 200, "ok") for n in range(3)]
    for event in (good[0], poison, *good[1:]):
        audit._enqueue(event)
    audit.flush()
    stored = sorted(event.instance_id for event in query_events(store.engine))
    store.close()
    # PostgreSQL refuses a NUL in text; MariaDB stores it. Either way the good events are all there.
    assert [i for i in stored if i.startswith("vm-")] == ["vm-0", "vm-1", "vm-2"]


def test_a_refused_event_in_a_full_batch_is_found_in_few_transactions(
    server_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One by one, a refused event cost its batch 1,000 transactions (a disk flush each): the trail stalled."""
    store = SettingsStore(create_engine(server_database_url))
    store.ensure_schema()
    audit = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10_000)
    writes: list[int] = []
    write = audit._write

    def counted(batch: list[Event]) -> None:
        writes.append(len(batch))
        write(batch)

    monkeypatch.setattr(audit, "_write", counted)
    now = datetime.now(UTC)
    good = [Event(now, "write", f"vm-{n}", "10.0.0.1", "admin", 200, "ok") for n in range(BATCH_EVENTS - 1)]
    poison = Event(now, "read", "x\x00", "10.0.0.1", "anonymous", 401, "access_denied")  # not escaped on purpose
    for event in (*good[:700], poison, *good[700:]):
        audit._enqueue(event)
    audit.flush()
    stored = [event.instance_id for event in query_events(store.engine, limit=BATCH_EVENTS)]
    store.close()
    assert sum(i.startswith("vm-") for i in stored) == BATCH_EVENTS - 1
    assert len(writes) <= 2 * math.ceil(math.log2(BATCH_EVENTS)) + 1, writes  # PostgreSQL refuses; MariaDB: 1


def test_events_wait_in_memory_while_the_database_is_away_and_none_is_lost(server_database_url: URL) -> None:
    proxy = TcpProxy(server_database_url.host or "127.0.0.1", server_database_url.port or 0).start()
    through_proxy = server_database_url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    store = SettingsStore(build_engine(DbConfig(url=through_proxy, connect_timeout=1)))
    try:
        store.ensure_schema()
        audit = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=1000)
        now = datetime.now(UTC)
        audit._enqueue(Event(now, "write", "vm-before", "10.0.0.1", "admin", 200, "ok"))
        audit.flush()  # a pooled connection now exists: the cut breaks it mid-use
        proxy.cut()
        for n in range(5):
            audit._enqueue(Event(now, "write", f"vm-{n}", "10.0.0.1", "admin", 200, "ok"))
            audit.record_read(f"vm-{n}", "10.0.0.2", "per-vm")
        audit.flush()
        assert audit.queue_depth == 10  # kept, not dropped: five writes and five counted reads
        proxy.restore()
        audit.flush()
        assert audit.queue_depth == 0
        assert audit.dropped_total == 0
    finally:
        store.close()
        proxy.close()
    stored = [(event.action, event.instance_id) for event in events_of(server_database_url)]
    assert sorted(stored) == sorted(
        [("write", "vm-before")] + [(action, f"vm-{n}") for n in range(5) for action in ("write", "read")]
    )


def test_refusals_from_one_address_are_counted_not_written_one_by_one(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry: RegistryProcess = start_registry(auth_throttle={"max_failures": 1000, "window": 60, "block": 60})
    started = time.monotonic()
    with httpx.Client(auth=("admin", "wrong"), timeout=10) as http:
        for _ in range(300):
            assert http.get(f"{registry.url}/instances/vm-1/settings").status_code == 401
    windows = int((time.monotonic() - started) // REFUSALS_WINDOW) + 2  # the requests may straddle a boundary
    registry.stop()  # closes the window and writes it
    refused = [e for e in events_of(f"sqlite:///{tmp_path}/registry.db") if e.status == 401]
    assert len(refused) <= 2 * windows  # per window: the first at once, the rest as one event
    assert sum(event.count for event in refused) == 300


def test_pruning_removes_refusals_before_anything_else(tmp_path: Path) -> None:
    store = SettingsStore(create_engine(f"sqlite:///{tmp_path}/audit.db"))
    store.ensure_schema()
    now = datetime.now(UTC)
    rows = [dict(at=now, action="write", instance_id=f"vm-{n}", client="10.0.0.5", credential="admin", status=200,
                 outcome="ok", count=None) for n in range(5)]  # fmt: skip
    rows += [dict(at=now, action="read", instance_id="vm-0", client="10.9.9.9", credential="refused", status=401,
                  outcome="access_denied", count=50) for _ in range(20)]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(registry_events), rows)
    AuditLog(store.engine, max_age=timedelta(days=1), max_rows=10).prune()
    with store.engine.connect() as conn:
        kept = conn.execute(select(registry_events.c.status)).scalars().all()
    store.close()
    assert sorted(kept) == [200] * 5 + [401] * 5


def test_events_escape_control_characters(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    for raw in ("a%0A2026-01-01T00:00:00Z%20write%20vm-1%20from%20admin", "b%1B%5B2J"):
        httpx.get(f"{registry.url}/instances/{raw}/settings")
    registry.stop()
    config = registry.args[registry.args.index("--config") + 1]
    result = boshreg("events", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert any("a\\x0a2026-01-01T00:00:00Z write vm-1 from admin" in line for line in lines)


def test_an_older_events_table_gains_the_count_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE registry_events (id INTEGER PRIMARY KEY, at TIMESTAMP NOT NULL, action VARCHAR(16) "
                "NOT NULL, instance_id VARCHAR(255) NOT NULL, client VARCHAR(64) NOT NULL, credential VARCHAR(16) "
                "NOT NULL, status SMALLINT NOT NULL, outcome VARCHAR(32) NOT NULL)"
            )
        )
    engine.dispose()
    store = SettingsStore(create_engine(url))
    store.ensure_schema()
    with store.engine.connect() as conn:
        columns = [row[1] for row in conn.execute(text("PRAGMA table_info(registry_events)"))]
    store.close()
    assert columns[-1] == "count"


def test_the_data_directory_and_every_file_in_it_are_private(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    registry = start_registry(args=["--data-dir", str(data_dir)])
    password = (data_dir / "admin-password").read_text().strip()
    assert (
        httpx.put(
            f"{registry.url}/instances/vm-1/settings", content=b'{"agent_id":"a"}', auth=("admin", password)
        ).status_code
        == 200
    )
    assert data_dir.stat().st_mode & 0o777 == 0o700
    files = sorted(path.name for path in data_dir.iterdir())
    assert "registry.db" in files
    for name in files:
        assert (data_dir / name).stat().st_mode & 0o077 == 0, name


def test_a_shared_database_file_is_named_with_its_fix(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    registry = start_registry(f"sqlite:///{database}")
    registry.stop()
    assert f"restrict it: chmod 600 {database}" in registry.stderr()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"agent_id": "a", "n": ' + b"9" * 5000 + b"}", "outside the range the agent can decode"),
        (b'{"agent_id": "a", "n": 1e400}', "settings hold the number 1e400, outside the range"),
    ],
    ids=["5000-digit integer", "1e400"],
)
def test_numbers_the_agent_cannot_decode_are_400(shared_registry: RegistryProcess, body: bytes, said: str) -> None:
    answer = httpx.put(f"{shared_registry.url}/instances/vm-numbers/settings", content=body, auth=ADMIN)
    assert answer.status_code == 400
    assert said in answer.json()["error"]


def test_numbers_within_range_are_stored(shared_registry: RegistryProcess) -> None:
    body = b'{"agent_id": "a", "big": 123456789012345678901234567890, "small": 1.5e-300}'
    assert (
        httpx.put(f"{shared_registry.url}/instances/vm-numbers-ok/settings", content=body, auth=ADMIN).status_code
        == 200
    )


def test_a_trailing_slash_is_404_json_not_a_redirect(shared_registry: RegistryProcess) -> None:
    answer = httpx.get(
        f"{shared_registry.url}/instances/vm-1/settings/", headers={"Host": "attacker.example"}, auth=ADMIN
    )
    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert answer.json()["status"] == "not_found"


def test_a_zero_config_password_file_with_a_well_known_password_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "admin-password").write_text("admin\n")
    (data_dir / "admin-password").chmod(0o600)
    result = boshreg("serve", "--data-dir", str(data_dir), "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"boshreg: error: {data_dir}/admin-password holds a well-known password ('admin'): anyone could read every "
        "VM's settings; delete it to have one generated (and update the VMs' endpoints)"
    ]


# --- throttling that stops attackers, not owners -----------------------------------------------------


def test_one_users_failures_never_block_another_from_the_same_address() -> None:
    throttle = AuthThrottle(max_failures=3, window=60, block=60, now=lambda: 0.0)
    for _ in range(3):
        throttle.failed("10.0.0.7", "vm-1")  # VMs behind one NAT with a stale credential
    assert throttle.retry_after("10.0.0.7", "vm-1") == 60
    assert throttle.retry_after("10.0.0.7", "admin") is None


def test_an_address_spraying_users_is_blocked_for_them_but_not_for_a_user_without_failures() -> None:
    throttle = AuthThrottle(max_failures=3, window=60, block=60, now=lambda: 0.0, address_factor=2)
    for name in ("a", "b", "c", "d", "e", "f"):  # 6 = 3 x 2 failures across users
        throttle.failed("10.0.0.8", name)
    assert throttle.retry_after("10.0.0.8", "a") == 60  # users that failed from there: blocked
    assert throttle.retry_after("10.0.0.8", "") == 60  # anonymous (address checks): blocked
    assert throttle.retry_after("10.0.0.8", "admin") is None  # a user that never failed there is still checked
    assert throttle.retry_after("10.0.0.9", "a") is None


def test_ipv6_callers_are_counted_by_their_64() -> None:
    throttle = AuthThrottle(max_failures=2, window=60, block=60, now=lambda: 0.0)
    throttle.failed("2001:db8:1:2::10", "admin")
    throttle.failed("2001:db8:1:2:ffff::99", "admin")  # another address, the same /64
    assert throttle.retry_after("2001:db8:1:2::1", "admin") == 60
    assert throttle.retry_after("2001:db8:1:3::1", "admin") is None


def test_a_reserved_failure_is_released_when_the_slow_check_succeeds() -> None:
    throttle = AuthThrottle(max_failures=2, window=60, block=60, now=lambda: 0.0)
    stamp = throttle.reserve("10.0.0.7", "admin")
    throttle.release("10.0.0.7", "admin", stamp)
    throttle.failed("10.0.0.7", "admin")
    assert throttle.retry_after("10.0.0.7", "admin") is None


def test_the_admin_is_not_locked_out_by_vms_failing_behind_the_same_address(start_registry: RegistryLauncher) -> None:
    registry = start_registry(auth_throttle={"max_failures": 3, "window": 60, "block": 60})
    for _ in range(5):
        assert httpx.get(f"{registry.url}/instances/vm-1/settings", auth=("vm-1", "stale")).status_code in (401, 429)
    assert httpx.get(f"{registry.url}/instances/vm-1/settings", auth=("vm-1", "stale")).status_code == 429
    assert httpx.get(f"{registry.url}/instances/vm-1/settings", auth=ADMIN).status_code == 404


HASHED_ADMIN = bcrypt.hashpw(b"Hashed-Adm1n", bcrypt.gensalt(10)).decode()


def test_concurrent_guesses_cannot_all_reach_bcrypt(start_registry: RegistryLauncher) -> None:
    registry = start_registry(password=None, password_hash=HASHED_ADMIN)
    url = f"{registry.url}/instances/vm-1/settings"

    async def guess_40() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as http:
            answers = await asyncio.gather(*(http.get(url, auth=("admin", f"guess-{n}")) for n in range(40)))
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(guess_40())
    assert statuses.count(401) <= 10  # the configured limit; every other guess was refused before bcrypt
    assert statuses.count(429) >= 30


def test_an_unknown_user_costs_a_bcrypt_check_like_a_wrong_password(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        checks.append(hashed)
        return real(password, hashed)

    authenticator = Authenticator({"admin": AdminSecret(password_hash=HASHED_ADMIN)}, "instance-secret")
    monkeypatch.setattr(bcrypt, "checkpw", counted)
    for user in ("admin", "nobody"):
        header = "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()
        assert authenticator.needs_hash_check(header)
        assert authenticator.identify(header).caller is Caller.REFUSED
    assert len(checks) == 2  # one for the known user's wrong password, one decoy for the unknown user
    vm_token = "Basic " + base64.b64encode(f"vm-1:{instance_token('instance-secret', 'vm-1')}".encode()).decode()
    assert not authenticator.needs_hash_check(vm_token)  # a VM's own credential never pays for bcrypt
    assert authenticator.identify(vm_token).caller is Caller.INSTANCE
