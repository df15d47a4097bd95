"""`boshreg export` and `boshreg import`: byte-identical round trips between SQLite, PostgreSQL and MariaDB,
from a database laid out as the Ruby registry's migration does, all or nothing, idempotent, dry runs."""

from __future__ import annotations

import json
import stat
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import URL, create_engine, text

from boshreg.registry.audit import AuditLog
from boshreg.registry.cache import CHANGE_POLL_SECONDS
from boshreg.registry.store import SettingsStore
from conftest import RegistryLauncher, usable_backend
from support.cli import assert_one_line_error, boshreg
from support.databases import original_table_ddl
from support.registry import ADMIN_PASSWORD

ADMIN = ("admin", ADMIN_PASSWORD)

# Settings as the CPI wrote them: kept byte for byte (spacing, key order, non-ASCII, escapes).
SETTINGS = {
    "vm-a": '{"agent_id": "a-1",  "mbus": "nats://nats:s3cret@10.0.0.6:4222", "env": {"note": "café \\u00e9"}}',
    "vm-b": '{"agent_id":"a-2","networks":{"default":{"ip":"10.0.0.12"}}}',
    "vm-c": '{"agent_id": "a-3", "blob": "' + "x" * 70_000 + '"}',  # beyond MySQL TEXT: LONGTEXT where we create it
}


def config_for(url: URL, path: Path) -> Path:
    path.write_text(
        "http:\n  user: admin\n  password: pw-transfer\n"
        f"db:\n  url: {json.dumps(url.render_as_string(hide_password=False))}\n"
    )
    return path


def filled(url: URL) -> None:
    """A registry's database after some life: settings, a revoked credential, fleet rows from the trail."""
    store = SettingsStore(create_engine(url))
    for instance_id, settings in SETTINGS.items():
        store.put(instance_id, settings)
    store.revoke("vm-b")
    trail = AuditLog(store.engine, max_age=timedelta(days=1), max_rows=1000, writer=store.writer)
    trail.record("write", "vm-a", "10.0.0.4", "admin", 200, "ok", size=len(SETTINGS["vm-a"]))
    trail.record_read("vm-a", "10.0.0.17", "per-vm")
    trail.record("read", "vm-b", "10.0.0.18", "per-vm", 401, "revoked")
    trail.flush()
    store.close()


def export(config: Path, tmp_path: Path, name: str) -> bytes:
    result = boshreg("export", "--config", str(config), "-o", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return (tmp_path / name).read_bytes()


def test_sqlite_to_each_backend_and_back_is_byte_identical(database_url: URL, tmp_path: Path) -> None:
    source = URL.create("sqlite", database=str(tmp_path / "source.db"))
    filled(source)
    first = export(config_for(source, tmp_path / "source.yml"), tmp_path, "first.jsonl")
    assert stat.S_IMODE((tmp_path / "first.jsonl").stat().st_mode) == 0o600
    lines = first.decode().splitlines()
    assert json.loads(lines[0]) == {"format": "boshreg-export", "version": 1}
    records = {json.loads(line)["instance_id"]: json.loads(line) for line in lines[1:]}
    assert {key: record["settings"] for key, record in records.items()} == SETTINGS
    assert records["vm-b"]["generation"] == 1
    assert records["vm-a"]["fleet"]["reads"] == 1

    target = config_for(database_url, tmp_path / "target.yml")
    imported = boshreg("import", "first.jsonl", "--config", str(target), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("3 instances in first.jsonl: create 3, change 0, 0 unchanged")
    assert export(target, tmp_path, "second.jsonl") == first
    again = boshreg("import", "first.jsonl", "--config", str(target), "--json", cwd=tmp_path)
    assert json.loads(again.stdout) == {"dry_run": False, "created": [], "changed": [], "unchanged": 3}


def test_a_ruby_registry_database_moves_over_byte_identical(database_url: URL, tmp_path: Path) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:  # as the original's migration made it, written by the original
        conn.execute(text(original_table_ddl(database_url)))
        for instance_id, settings in list(SETTINGS.items())[:2]:
            conn.execute(
                text("INSERT INTO registry_instances (instance_id, settings) VALUES (:i, :s)"),
                {"i": instance_id, "s": settings},
            )
    engine.dispose()
    first = export(config_for(database_url, tmp_path / "ruby.yml"), tmp_path, "ruby.jsonl")
    assert [json.loads(line)["fleet"] for line in first.decode().splitlines()[1:]] == [None, None]
    target = config_for(URL.create("sqlite", database=str(tmp_path / "moved.db")), tmp_path / "moved.yml")
    assert boshreg("import", "ruby.jsonl", "--config", str(target), cwd=tmp_path).returncode == 0
    assert export(target, tmp_path, "moved.jsonl") == first


def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path: Path) -> None:
    good = json.dumps({"instance_id": "vm-1", "settings": '{"a": 1}', "generation": 0, "fleet": None})
    (tmp_path / "bad.jsonl").write_text(f'{{"format":"boshreg-export","version":1}}\n{good}\n{{"instance_id": "vm 2"\n')
    target = config_for(URL.create("sqlite", database=str(tmp_path / "t.db")), tmp_path / "t.yml")
    assert_one_line_error(boshreg("import", "bad.jsonl", "--config", str(target), cwd=tmp_path), "bad.jsonl line 3")
    (tmp_path / "bad.jsonl").write_text(f"{good}\n" + good.replace("vm-1", "vm/2") + "\n")
    result = boshreg("import", "bad.jsonl", "--config", str(target), "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert "line 2" in json.loads(result.stdout)["error"]
    assert SettingsStore(create_engine(f"sqlite:///{tmp_path}/t.db")).count() == 0


def test_a_dry_run_says_what_would_change_and_changes_nothing(tmp_path: Path) -> None:
    source = URL.create("sqlite", database=str(tmp_path / "source.db"))
    filled(source)
    export(config_for(source, tmp_path / "source.yml"), tmp_path, "all.jsonl")
    target_url = URL.create("sqlite", database=str(tmp_path / "target.db"))
    store = SettingsStore(create_engine(target_url))
    store.put("vm-a", '{"agent_id": "old"}')
    store.close()
    target = config_for(target_url, tmp_path / "target.yml")
    dry = boshreg("import", "all.jsonl", "--config", str(target), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "dry run: 3 instances in all.jsonl: would create 2, would change 1, 0 unchanged",
        "  would create vm-b",
        "  would create vm-c",
        "  would change vm-a",
    ]
    assert SettingsStore(create_engine(target_url)).get("vm-a") == '{"agent_id": "old"}'


def test_export_refuses_a_missing_directory_and_a_database_that_is_away(tmp_path: Path) -> None:
    source = config_for(URL.create("sqlite", database=str(tmp_path / "s.db")), tmp_path / "s.yml")
    assert_one_line_error(boshreg("export", "--config", str(source), "-o", "nowhere/x.jsonl", cwd=tmp_path), "nowhere")
    usable_backend("postgres")
    away = config_for(
        URL.create("postgresql", username="bosh", host="127.0.0.1", port=1, database="r"), tmp_path / "a.yml"
    )
    assert_one_line_error(boshreg("export", "--config", str(away), cwd=tmp_path), "cannot read the registry's database")


@pytest.mark.parametrize("command", ["export", "import"])
def test_the_help_says_what_the_command_is_for(command: str, tmp_path: Path) -> None:
    result = boshreg(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Examples:" in result.stdout


def test_an_import_is_read_at_once_through_running_registries(
    database_url: URL, tmp_path: Path, start_registry: RegistryLauncher
) -> None:
    """Their read caches hear of it as of any write of boshreg's: SQLite's marker file, PostgreSQL's notification,
    MySQL's change counter (each within its bound, README "The read cache"); entries here live a minute."""
    registry = start_registry(database_url, cache_seconds=60, workers=2)
    url = f"{registry.url}/instances/vm-imported/settings"
    assert httpx.put(url, content=b'{"version": 1}', auth=ADMIN).status_code == 200
    for _ in range(10):  # cached in both workers
        assert httpx.get(url, auth=ADMIN, headers={"Connection": "close"}).json()["settings"] == '{"version": 1}'
    record = {"instance_id": "vm-imported", "settings": '{"version": 2}', "generation": 0, "fleet": None}
    (tmp_path / "new.jsonl").write_text(
        json.dumps({"format": "boshreg-export", "version": 1}) + "\n" + json.dumps(record)
    )
    imported = boshreg(
        "import", "new.jsonl", "--config", str(config_for(database_url, tmp_path / "c.yml")), cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr
    time.sleep(CHANGE_POLL_SECONDS + 0.2)  # the longest of the bounds
    for _ in range(10):
        assert httpx.get(url, auth=ADMIN, headers={"Connection": "close"}).json()["settings"] == '{"version": 2}'
