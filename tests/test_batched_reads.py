"""Reads of one loop turn together in one worker thread, where no read pool serves the loop (MySQL; PostgreSQL
with an option asyncpg cannot take): each caller its own answer, as the one-id read gives it, on real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL

from boshreg.registry.config import DbConfig
from boshreg.registry.engine import build_engine, build_read_pool
from boshreg.registry.store import SettingsStore, Stored, StoreUnavailable
from conftest import usable_backend
from support.proxy import TcpProxy

# PostgreSQL with gssencmode, which only libpq takes: its reads stay off asyncpg, so they take this road too.
_THREAD_READ_OPTIONS = {"mysql": {}, "postgres": {"connection_options": {"gssencmode": "disable"}}}


@pytest.fixture(
    params=[pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def threaded_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SettingsStore]:
    with usable_backend(request.param).fresh_database(tmp_path) as url:
        store = store_for(url, **_THREAD_READ_OPTIONS[request.param])
        try:
            yield store
        finally:
            store.close()


def store_for(url: URL, **db: Any) -> SettingsStore:
    config = DbConfig(url=url.render_as_string(hide_password=False), **db)
    store = SettingsStore(build_engine(config), build_read_pool(config))
    assert store.read_pool is None
    assert store.reads_async
    store.ensure_schema()
    return store


def together(store: SettingsStore, wanted: list[str]) -> list[Stored | BaseException]:
    """``get_async`` of every id at once, on one loop: one turn's reads."""

    async def reads() -> list[Stored | BaseException]:
        return await asyncio.gather(*(store.get_async(i) for i in wanted), return_exceptions=True)

    return asyncio.run(reads())


def statements(engine: Engine) -> list[str]:
    """The statements ``engine`` sends from now on (first words), as the server sees them."""
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(" ".join(args[2].split()[:2])))
    return seen


def test_reads_arriving_together_each_get_their_own_settings_and_generation(threaded_store: SettingsStore) -> None:
    store = threaded_store
    for n in range(5):
        store.put(f"vm-{n}", f'{{"agent_id": "a-{n}"}}')
    store.revoke("vm-2")  # its per-VM credential is of generation 1 now
    store.put("vm-gone", "{}")
    assert store.delete("vm-gone")  # no settings, but a generation: its old credential must stay refused
    wanted = [f"vm-{n % 7}" for n in range(140)] + ["vm-gone"]  # vm-5 and vm-6 are not stored
    one_by_one = {i: store.read(i) for i in set(wanted)}
    sent = statements(store.engine)
    found = together(store, wanted)
    assert found == [one_by_one[i] for i in wanted]
    stored = [Stored(f'{{"agent_id": "a-{n}"}}', 1 if n == 2 else 0) for n in range(5)]
    assert found[:7] == [*stored, Stored(None), Stored(None)]
    assert one_by_one["vm-gone"].generation > 0
    # 141 reads: one statement for all, then one each for the ids without a row (vm-5, vm-6)
    assert len(sent) == 3, sent


def test_an_id_that_is_not_a_registry_key_is_read_alone_and_fails_only_itself(threaded_store: SettingsStore) -> None:
    store = threaded_store
    store.put("vm-1", '{"agent_id": "a-1"}')
    first, alone, second = together(store, ["vm-1", "bad\udcff", "vm-1"])  # a lone surrogate: no driver sends it
    assert isinstance(alone, UnicodeEncodeError)  # (over HTTP the app answers 400 before any read)
    assert first == second == Stored('{"agent_id": "a-1"}')


@pytest.mark.mysql
def test_a_database_that_went_away_is_every_waiting_read_s_503_with_its_cause(tmp_path: Path) -> None:
    with usable_backend("mysql").fresh_database(tmp_path) as url:
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 0).start()
        store = store_for(url.set(host="127.0.0.1", port=proxy.port), connect_timeout=1)
        try:
            store.put("vm-1", "{}")
            assert together(store, ["vm-1"]) == [Stored("{}")]  # a pooled connection now exists
            proxy.cut()
            found = together(store, ["vm-1", "vm-2", "vm-3"])
            assert all(isinstance(f, StoreUnavailable) for f in found), found
            assert all(str(f).startswith("database unavailable (") for f in found), found
            proxy.restore()
            assert together(store, ["vm-1", "vm-2"]) == [Stored("{}"), Stored(None)]
        finally:
            store.close()
            proxy.close()


@pytest.mark.mysql
def test_a_table_the_original_made_without_case_answers_as_the_one_id_read_does(tmp_path: Path) -> None:
    """MySQL databases often default to a case-insensitive collation, and the original's migration took it."""
    with usable_backend("mysql").fresh_database(tmp_path) as url:
        store = store_for(url)
        try:
            with store.engine.begin() as conn:
                conn.execute(text("DROP TABLE registry_instances"))
                conn.execute(
                    text(
                        "CREATE TABLE registry_instances (id INTEGER PRIMARY KEY AUTO_INCREMENT, "
                        "instance_id VARCHAR(255) NOT NULL UNIQUE, settings TEXT NOT NULL) "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                    )
                )
                conn.execute(text("INSERT INTO registry_instances (instance_id, settings) VALUES ('vm-abc', '{}')"))
            wanted = ["VM-ABC", "vm-abc", "Vm-Abc", "vm-abd"]
            assert together(store, wanted) == [store.read(i) for i in wanted] == [Stored("{}")] * 3 + [Stored(None)]
        finally:
            store.close()
