"""The settings store against real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from boshreg.registry.config import DbConfig
from boshreg.registry.engine import build_engine, build_read_pool
from boshreg.registry.store import SettingsRejected, SettingsStore, Stored, StoreUnavailable, pool_size
from conftest import usable_backend
from support.databases import original_table_ddl

SETTINGS = '{"agent_id": "a-1",  "vm": {"name": "vm-1"}, "note": "kept  as   written"}'


@pytest.fixture
def store(database_url: URL) -> Iterator[SettingsStore]:
    store = SettingsStore(build_engine(DbConfig(url=database_url.render_as_string(hide_password=False))))
    store.ensure_schema()
    yield store
    store.close()


def test_missing_instance_reads_as_none(store: SettingsStore) -> None:
    assert store.get("vm-unknown") is None


def test_put_then_get_returns_the_text_exactly(store: SettingsStore) -> None:
    store.put("vm-1", SETTINGS)
    assert store.get("vm-1") == SETTINGS


def test_put_replaces_existing_settings(store: SettingsStore) -> None:
    store.put("vm-1", SETTINGS)
    store.put("vm-1", '{"agent_id": "a-2"}')
    assert store.get("vm-1") == '{"agent_id": "a-2"}'
    assert store.count() == 1


def test_non_ascii_settings_survive_unchanged(store: SettingsStore) -> None:
    settings = json.dumps({"env": {"motd": "Grüße, 世界 🚀", "escaped": "\\u00e9"}}, ensure_ascii=False)
    store.put("vm-1", settings)
    assert store.get("vm-1") == settings


def test_large_settings_up_to_the_body_limit_are_kept(store: SettingsStore) -> None:
    settings = json.dumps({"env": {"blob": "x" * (1024 * 1024 - 100)}})
    store.put("vm-big", settings)
    assert store.get("vm-big") == settings


def test_instance_ids_are_case_sensitive(store: SettingsStore) -> None:
    store.put("vm-A", '{"n": 1}')
    store.put("vm-a", '{"n": 2}')
    assert (store.get("vm-A"), store.get("vm-a")) == ('{"n": 1}', '{"n": 2}')


def test_delete_reports_whether_something_was_removed(store: SettingsStore) -> None:
    store.put("vm-1", SETTINGS)
    assert store.delete("vm-1") is True
    assert store.get("vm-1") is None
    assert store.delete("vm-1") is False


def test_concurrent_writers_to_one_instance_leave_one_row(store: SettingsStore) -> None:
    documents = [json.dumps({"writer": n}) for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda doc: store.put("vm-race", doc), documents))
    assert store.count() == 1
    assert store.get("vm-race") in documents


def test_ensure_schema_keeps_existing_rows(store: SettingsStore, database_url: URL) -> None:
    store.put("vm-1", SETTINGS)
    again = SettingsStore(build_engine(DbConfig(url=database_url.render_as_string(hide_password=False))))
    again.ensure_schema()
    assert again.get("vm-1") == SETTINGS
    again.close()


def test_ping_answers_when_the_database_is_up(store: SettingsStore) -> None:
    store.ping()


def test_table_without_unique_index_still_replaces_settings(database_url: URL) -> None:
    url = database_url.render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(original_table_ddl(database_url, unique=False)))
    engine.dispose()
    store = SettingsStore(build_engine(DbConfig(url=url)))
    store.put("vm-1", '{"v": 1}')
    store.put("vm-1", '{"v": 2}')
    assert store.get("vm-1") == '{"v": 2}'
    assert store.count() == 1
    store.close()


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_original_mysql_text_column_refuses_oversize_settings_clearly(database_url: URL) -> None:
    url = database_url.render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as conn:  # the original's migration on MySQL: settings is TEXT (64 KiB)
        conn.execute(text(original_table_ddl(database_url)))
    engine.dispose()
    store = SettingsStore(build_engine(DbConfig(url=url)))
    with pytest.raises(SettingsRejected, match="LONGTEXT") as raised:
        store.put("vm-1", json.dumps({"blob": "x" * 70_000}))
    assert raised.value.too_large
    assert store.get("vm-1") is None
    store.close()


def test_sqlite_runs_in_wal_mode_with_durable_commits(tmp_path: Path) -> None:
    store = SettingsStore(build_engine(DbConfig(adapter="sqlite", database=str(tmp_path / "r.db"))))
    store.put("vm-1", "{}")
    with store.engine.connect() as conn:
        journal_mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    store.close()
    assert (journal_mode, synchronous) == ("wal", 2)  # 2 = FULL: fsync before the commit returns


@pytest.mark.sqlite
def test_sqlite_read_in_line_fails_as_unavailable_and_recovers(tmp_path: Path) -> None:
    """A read that SQLite refuses is a 503 for that request, not an internal error, and the next read works."""
    store = SettingsStore(build_engine(DbConfig(url=f"sqlite:///{tmp_path / 'registry.db'}")))
    store.put("vm-1", SETTINGS)
    assert store.get_inline("vm-1").settings == SETTINGS
    other = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    with other.begin() as conn:
        conn.execute(text("ALTER TABLE registry_instances RENAME TO registry_instances_moved"))
    with pytest.raises(StoreUnavailable, match="no such table"):
        store.get_inline("vm-1")
    with other.begin() as conn:
        conn.execute(text("ALTER TABLE registry_instances_moved RENAME TO registry_instances"))
    other.dispose()
    assert store.get_inline("vm-1").settings == SETTINGS
    store.close()


@pytest.mark.postgres
def test_postgres_reads_on_the_event_loop_see_what_was_written(tmp_path: Path) -> None:
    backend = usable_backend("postgres")
    with backend.fresh_database(tmp_path) as url:
        db = DbConfig(url=url.render_as_string(hide_password=False))
        store = SettingsStore(build_engine(db), build_read_pool(db))
        assert store.reads_async

        async def read_written() -> tuple[str | None, str | None]:
            await asyncio.to_thread(store.put, "vm-1", SETTINGS)
            found = (await store.get_async("vm-1")).settings, (await store.get_async("vm-unknown")).settings
            await store.aclose()
            return found

        assert asyncio.run(read_written()) == (SETTINGS, None)
        store.close()


@pytest.mark.parametrize("max_connections", [1, 4, 32])
def test_postgres_reads_and_writes_share_db_max_connections(max_connections: int) -> None:
    db = DbConfig(url="postgresql://bosh@127.0.0.1/registry", max_connections=max_connections)
    threads, on_the_loop = build_engine(db), build_read_pool(db)
    assert on_the_loop is not None
    sizes = [pool_size(threads), on_the_loop.size]
    assert sum(sizes) == max(2, max_connections)  # at least one each
    assert min(sizes) >= 1


def test_deleting_settings_and_revoking_raise_the_credential_generation(store: SettingsStore) -> None:
    """The generation is what makes a VM's old credential stop working: each delete and revoke raises it,
    in the write's own transaction, and a read returns it with the settings."""
    assert store.read("vm-gen") == Stored(None, 0)
    store.put("vm-gen", SETTINGS)
    assert store.read("vm-gen") == Stored(SETTINGS, 0)
    assert store.revoke("vm-gen") == 1
    assert store.read("vm-gen") == Stored(SETTINGS, 1)  # settings stay
    store.delete("vm-gen")
    assert store.read("vm-gen") == Stored(None, 2)
    store.put("vm-gen", SETTINGS)
    assert (store.read("vm-gen"), store.generation("vm-other")) == (Stored(SETTINGS, 2), 0)
    if store.reads_inline:
        assert store.get_inline("vm-gen") == Stored(SETTINGS, 2)
