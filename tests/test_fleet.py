"""The fleet view: what the registry knows of each instance, kept by the audit writer (``registry/fleet``),
shown by `boshreg fleet` from the database or a running registry, right with several workers and replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import URL, create_engine, insert, select

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.audit import Event
from boshreg.registry.fleet import State, apply_changes, changes_of, classify
from boshreg.registry.tables import metadata, registry_fleet, registry_instances
from boshreg.testcloud.openstack import FakeServer, OpenStackStandIn
from conftest import RegistryLauncher
from support.cli import assert_one_line_error, boshreg, in_a_terminal
from support.http import get_from
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess, free_port

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = b'{"agent_id": "a-1"}'
WAIT_SECONDS = 10  # the audit writer flushes every 0.5 s (further reads every 10 s); this bounds a wait for it
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
AGENT_WAIT = 3  # seconds: the states test has this long after its last PUT to read the fleet


# --- merging a batch of events -----------------------------------------------------------------------


def event(action: str, instance_id: str, status: int = 200, seconds: int = 0, **more: Any) -> Event:
    fields: dict[str, Any] = {"client": "10.0.0.7", "credential": "per-vm", "outcome": "ok", **more}
    return Event(T0 + timedelta(seconds=seconds), action, instance_id, status=status, **fields)


def test_a_batch_becomes_one_change_per_instance() -> None:
    changes = changes_of(
        [
            event("write", "vm-1", size=19),
            event("read", "vm-1", seconds=2, count=3, last_at=T0 + timedelta(seconds=4)),
            event("read", "vm-1", 401, seconds=5, outcome="access_denied", client="10.0.0.9", count=2),
            event("read", "vm-1", seconds=6, client="10.0.0.8"),
        ]
    )
    change = changes["vm-1"]
    assert (change.size, change.reads, change.refusals) == (19, 4, 2)
    assert (change.first_read, change.last_read, change.read_client) == (
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=6),
        "10.0.0.8",
    )
    assert (change.refusal_status, change.refusal_outcome, change.refusal_client) == (401, "access_denied", "10.0.0.9")


def test_a_delete_forgets_what_came_before_it_and_made_up_ids_are_ignored() -> None:
    changes = changes_of([event("read", "vm-1"), event("delete", "vm-1", seconds=1), event("read", "vm\\x00bad", 404)])
    assert changes["vm-1"].deleted
    assert changes["vm-1"].reads == 0
    assert "vm\\x00bad" not in changes


@pytest.mark.parametrize(
    ("row", "state", "cause"),
    [
        ({"stored_at": T0 - timedelta(seconds=30)}, State.WAITING, ""),
        ({"stored_at": T0 - timedelta(seconds=700)}, State.NEVER_READ, ""),
        ({"stored_at": None}, State.NEVER_READ, ""),  # stored before boshreg kept the fleet: age unknown
        ({"last_read_at": T0}, State.OK, ""),
        ({"last_read_at": T0, "last_refusal_at": T0 - timedelta(seconds=1)}, State.OK, ""),
        ({"last_read_at": T0, "last_refusal_at": T0 + timedelta(seconds=1), "last_refusal_status": 401,
          "last_refusal_outcome": "revoked"}, State.FAILING, "401 revoked"),
    ],
)  # fmt: skip
def test_states(row: dict[str, Any], state: State, cause: str) -> None:
    full = {"stored_at": T0, "last_read_at": None, "last_refusal_at": None, **row}
    assert classify(full, T0, 600) == (state, cause)


# --- against real `boshreg serve` processes -----------------------------------------------------------


@pytest.fixture
def cloud() -> Iterator[OpenStackStandIn]:
    stand_in = OpenStackStandIn(
        "bosh", "api-key-secret", "bosh",
        [FakeServer("vm-ip", fixed=["127.0.0.2"]), FakeServer("vm-x", fixed=["127.0.0.5"])],
    ).start()  # fmt: skip
    yield stand_in
    stand_in.stop()


def config_of(registry: RegistryProcess) -> str:
    return registry.args[registry.args.index("--config") + 1]


@pytest.mark.parametrize("rows", [3, 1200])  # 1,200: more ids than one statement's chunk on MySQL
def test_reads_reach_every_stored_instance_and_only_those(database_url: URL, rows: int) -> None:
    """A read of an instance with a fleet row adds to it; one stored by the original registry (no row yet)
    gets one; an id that is not stored gets none (the writer asks which ids have a row, in one statement)."""
    engine = create_engine(database_url)
    metadata.create_all(engine)
    stored = [f"vm-{n}" for n in range(rows)]
    with engine.begin() as conn:
        conn.execute(insert(registry_instances), [{"instance_id": key, "settings": "{}"} for key in stored])
        conn.execute(insert(registry_fleet), [{"instance_id": key, "reads": 5, "refusals": 0} for key in stored[::2]])
    batch = [event("read", key, seconds=n % 60) for n, key in enumerate([*stored, "vm-not-stored"])]
    with engine.begin() as conn:
        apply_changes(conn, changes_of(batch))
    with engine.connect() as conn:
        reads = dict(conn.execute(select(registry_fleet.c.instance_id, registry_fleet.c.reads)).all())
    engine.dispose()
    assert reads == {key: 6 if n % 2 == 0 else 1 for n, key in enumerate(stored)}


def put(registry: RegistryProcess, key: str) -> None:
    assert httpx.put(f"{registry.url}/instances/{key}/settings", content=SETTINGS, auth=ADMIN).status_code == 200


def get(registry: RegistryProcess, key: str, auth: tuple[str, str] | None) -> int:
    return httpx.get(f"{registry.url}/instances/{key}/settings", auth=auth, headers={"Connection": "close"}).status_code


def fleet(
    registry: RegistryProcess, tmp_path: Path, *extra: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, dict[str, Any]]:
    """``boshreg fleet --json`` by instance, once ``until`` holds (the writer flushes every 0.5 s)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        result = boshreg("fleet", "--config", config_of(registry), "--json", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = {row["instance_id"]: row for row in json.loads(result.stdout)}
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_each_state_an_operator_must_tell_apart(
    start_registry: RegistryLauncher, cloud: OpenStackStandIn, tmp_path: Path
) -> None:
    registry = start_registry(
        instance_secret=INSTANCE_SECRET,
        workers=2,
        cloud={"plugin": "openstack",
               "openstack": {"auth_url": cloud.auth_url, "username": "bosh", "api_key": "api-key-secret",
                             "tenant": "bosh", "region": "RegionOne"}},
    )  # fmt: skip
    for key in ("vm-old", "vm-ok", "vm-401", "vm-ip"):
        put(registry, key)
    time.sleep(AGENT_WAIT + 0.2)  # vm-old is now older than the agent wait below; vm-new is not
    put(registry, "vm-new")
    assert get(registry, "vm-ok", ("vm-ok", instance_token(INSTANCE_SECRET, "vm-ok"))) == 200
    assert get(registry, "vm-401", ("vm-401", "not-its-token")) == 401
    assert get_from(f"{registry.url}/instances/vm-ip/settings", "127.0.0.5")[0] == 500  # vm-x's address
    assert get(registry, "vm-made-up", ("admin", ADMIN_PASSWORD)) == 404  # not stored: never listed

    rows = fleet(
        registry,
        tmp_path,
        "--agent-wait",
        str(AGENT_WAIT),
        until=lambda rows: rows["vm-ip"]["refusals"] == 1 and rows["vm-ok"]["reads"] == 1,
    )
    states = {key: (row["state"], row["cause"]) for key, row in rows.items()}
    assert states == {
        "vm-old": ("never-read", ""),
        "vm-new": ("waiting", ""),
        "vm-ok": ("ok", ""),
        "vm-401": ("failing", "401 access_denied"),
        "vm-ip": ("failing", "500 ip_mismatch"),
    }
    assert (rows["vm-ok"]["last_read_credential"], rows["vm-ok"]["last_read_client"]) == ("per-vm", "127.0.0.1")
    assert rows["vm-ip"]["last_refusal_client"] == "127.0.0.5"
    assert rows["vm-ok"]["size"] == len(SETTINGS)

    endpoint = registry.url.replace("://", f"://admin:{ADMIN_PASSWORD}@")
    asked = boshreg("fleet", "--endpoint", endpoint, "--state", "failing", "--json", cwd=tmp_path)
    assert [row["instance_id"] for row in json.loads(asked.stdout)] == ["vm-401", "vm-ip"]
    assert httpx.get(f"{registry.url}/fleet").status_code == 401
    own = ("vm-ok", instance_token(INSTANCE_SECRET, "vm-ok"))
    assert httpx.get(f"{registry.url}/fleet", auth=own).status_code == 403


def test_reads_through_every_worker_and_replica_add_up(
    database_url: URL, start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    replicas = [start_registry(database_url, workers=2), start_registry(database_url, workers=2)]
    put(replicas[0], "vm-counted")
    put(replicas[1], "vm-gone")
    reads = 0
    for replica in replicas:
        for _ in range(15):
            assert get(replica, "vm-counted", ADMIN) == 200
            reads += 1
    for _ in range(7):
        assert get(replicas[1], "vm-counted", ("admin", "wrong")) == 401
    assert httpx.delete(f"{replicas[0].url}/instances/vm-gone/settings", auth=ADMIN).status_code == 200
    rows = fleet(
        replicas[1], tmp_path, until=lambda rows: rows.get("vm-counted", {}).get("reads") == reads
        and rows["vm-counted"]["refusals"] == 7,
    )  # fmt: skip
    assert list(rows) == ["vm-counted"]  # the deleted instance is gone from the fleet
    row = rows["vm-counted"]
    assert (row["reads"], row["refusals"], row["state"]) == (reads, 7, "failing")
    assert row["first_read_at"] <= row["last_read_at"] < row["last_refusal_at"]


def test_the_table_is_plain_when_piped_and_names_the_fix_when_the_database_is_away(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry()
    put(registry, "vm-table")
    # the write's fleet row comes with the writer's next flush; before it the VM's age is unknown (never-read)
    fleet(registry, tmp_path, until=lambda rows: rows["vm-table"]["stored_at"] is not None)
    result = boshreg("fleet", "--config", config_of(registry), cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "STATE", "STORED", "LAST", "READ", "FROM", "CREDENTIAL", "READS",
                                "REFUSED", "CAUSE"]  # fmt: skip
    assert lines[1].split()[:2] == ["vm-table", "waiting"]
    assert "\x1b[" not in result.stdout
    away = f"http:\n  user: admin\n  password: pw-{free_port()}\ndb:\n  url: postgresql://bosh@127.0.0.1:{free_port()}/reg\n"
    (tmp_path / "away.yml").write_text(away)
    for command in ("fleet", "events"):
        away_error = boshreg(command, "--config", "away.yml", cwd=tmp_path)
        assert_one_line_error(away_error, "cannot read the registry's database", "start the database")


def test_a_fleet_update_the_database_refuses_loses_no_audit_event(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sa_exc

    from boshreg.registry import audit as audit_module
    from boshreg.registry.audit import AuditLog, query_events
    from boshreg.registry.store import SettingsStore

    store = SettingsStore(create_engine(database_url))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=1000)

    def refused(_conn: object, _changes: object) -> None:
        raise sa_exc.IntegrityError("UPDATE registry_fleet", {}, Exception("refused"))

    monkeypatch.setattr(audit_module, "apply_changes", refused)
    trail.record("write", "vm-1", "10.0.0.1", "admin", 200, "ok", size=10)
    trail.flush()
    assert [event.instance_id for event in query_events(store.engine)] == ["vm-1"]
    store.close()


def test_a_fault_in_the_fleet_update_neither_loses_events_nor_stops_the_writer(
    database_url: URL, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import create_engine

    from boshreg.registry import audit as audit_module
    from boshreg.registry.audit import AuditLog, query_events
    from boshreg.registry.store import SettingsStore

    store = SettingsStore(create_engine(database_url))
    store.ensure_schema()
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=1000).start()

    def broken(_conn: object, _changes: object) -> None:
        raise KeyError("p_param")  # a bug of ours, not a database's refusal

    monkeypatch.setattr(audit_module, "apply_changes", broken)
    trail.record("write", "vm-1", "10.0.0.1", "admin", 200, "ok", size=10)
    deadline = time.monotonic() + WAIT_SECONDS
    while len(query_events(store.engine)) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    trail.record("write", "vm-2", "10.0.0.1", "admin", 200, "ok", size=10)
    while len(query_events(store.engine)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    trail.stop()
    assert sorted(event.instance_id for event in query_events(store.engine)) == ["vm-1", "vm-2"]
    assert "KeyError" in caplog.text  # with its traceback, for whoever reads the log
    store.close()


def test_states_are_coloured_on_a_terminal_unless_no_color(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    put(registry, "vm-colour")
    fleet(registry, tmp_path, until=lambda rows: rows["vm-colour"]["stored_at"] is not None)  # the writer's flush
    args = ["fleet", "--config", config_of(registry)]
    assert "\x1b[33mwaiting" in in_a_terminal(args, tmp_path, {})  # yellow: stored, not read yet
    plain = in_a_terminal(args, tmp_path, {"NO_COLOR": "1"})
    assert "waiting" in plain
    assert "\x1b[" not in plain
