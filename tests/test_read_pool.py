"""The event loop's PostgreSQL reads (read_pool) against a real server: bounds, waits, failures, recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool

from boshreg.registry.config import DbConfig
from boshreg.registry.engine import asyncpg_arguments, build_engine, build_read_pool
from boshreg.registry.read_pool import PoolExhausted, ReadPool, unavailable_cause
from boshreg.registry.store import SettingsStore, StoreUnavailable
from conftest import usable_backend
from support.registry import free_port

pytestmark = pytest.mark.postgres
SETTINGS = '{"agent_id": "a-1"}'
T = TypeVar("T")


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[URL]:
    with usable_backend("postgres").fresh_database(tmp_path) as url:
        yield url


def store_for(url: URL, **db: object) -> SettingsStore:
    config = DbConfig(url=url.render_as_string(hide_password=False), **db)
    store = SettingsStore(build_engine(config), build_read_pool(config))
    store.ensure_schema()
    return store


def on_a_loop(store: SettingsStore, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on a new event loop, then close the pool's connections on that loop, as a worker does."""

    async def run() -> T:
        try:
            return await work()
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    finally:
        store.close()


def sessions(url: URL) -> int:
    """The registry's connections to ``url``'s database, as the server counts them."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND application_name = 'boshreg-registry'"
            )
            return int(conn.execute(text(query), {"db": url.database}).scalar_one())
    finally:
        engine.dispose()


def pool_of(store: SettingsStore) -> ReadPool:
    assert store.read_pool is not None
    return store.read_pool


def test_many_reads_at_once_share_at_most_the_pool_s_connections(postgres_url: URL) -> None:
    store = store_for(postgres_url, max_connections=4)  # three for the loop's reads, one for the threads
    store.put("vm-1", SETTINGS)

    async def many() -> tuple[list[str | None], int]:
        found = await asyncio.gather(*(store.get_async("vm-1" if n % 2 else "vm-none") for n in range(60)))
        return [stored.settings for stored in found], await asyncio.to_thread(sessions, postgres_url)

    found, open_sessions = on_a_loop(store, many)
    assert found == [None, SETTINGS] * 30
    assert pool_of(store).size == 3
    assert open_sessions <= 3 + 1  # the read pool's, and at most one of the thread engine's


def test_a_read_waits_its_turn_then_gives_up_with_the_setting_to_raise(postgres_url: URL) -> None:
    store = store_for(postgres_url, max_connections=2, pool_timeout=0.5)  # one connection for the loop's reads

    async def blocked() -> tuple[str, float]:
        pool = pool_of(store)
        holder = asyncio.create_task(pool.fetchall("SELECT pg_sleep(2)", ()))
        await asyncio.sleep(0.3)  # the holder has the only connection
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            await store.get_async("vm-1")
        waited = time.monotonic() - started
        await holder
        return str(refused.value), waited

    said, waited = on_a_loop(store, blocked)
    assert "no free database connection within db.pool_timeout" in said
    assert "raise db.max_connections or db.pool_timeout" in said
    assert 0.4 < waited < 1.5


def test_waiters_are_served_in_the_order_they_came(postgres_url: URL) -> None:
    store = store_for(postgres_url, max_connections=2)

    async def queued() -> list[int]:
        pool = pool_of(store)
        order: list[int] = []
        holder = asyncio.create_task(pool.fetchall("SELECT pg_sleep(0.3)", ()))
        await asyncio.sleep(0.1)

        async def read(n: int) -> None:
            await pool.fetchall("SELECT 1", ())
            order.append(n)

        waiters = []
        for n in range(8):
            waiters.append(asyncio.create_task(read(n)))
            await asyncio.sleep(0.01)  # each in the queue before the next
        await asyncio.gather(holder, *waiters)
        return order

    assert on_a_loop(store, queued) == list(range(8))


def test_a_connection_the_server_dropped_is_replaced_without_failing_the_read(postgres_url: URL) -> None:
    store = store_for(postgres_url)
    store.put("vm-1", SETTINGS)

    async def dropped() -> str | None:
        await store.get_async("vm-1")  # a connection now idle in the pool
        await asyncio.to_thread(terminate_sessions, postgres_url)
        return (await store.get_async("vm-1")).settings

    assert on_a_loop(store, dropped) == SETTINGS


def terminate_sessions(url: URL) -> None:
    """What a database restart or a proxy's idle timeout does to the registry's connections."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND application_name = 'boshreg-registry'"
                ),
                {"db": url.database},
            )
    finally:
        engine.dispose()


def test_a_read_cancelled_mid_query_does_not_leave_its_connection_behind(postgres_url: URL) -> None:
    store = store_for(postgres_url, max_connections=2)  # one connection: it must come back usable
    store.put("vm-1", SETTINGS)

    async def cancelled() -> str | None:
        pool = pool_of(store)
        reading = asyncio.create_task(pool.fetchall("SELECT pg_sleep(5)", ()))
        await asyncio.sleep(0.3)
        reading.cancel()  # as the request's deadline does
        with pytest.raises(asyncio.CancelledError):
            await reading
        started = time.monotonic()
        settings = (await store.get_async("vm-1")).settings
        assert time.monotonic() - started < 2  # not behind the cancelled sleep
        return settings

    assert on_a_loop(store, cancelled) == SETTINGS


def test_a_database_that_is_not_there_fails_the_read_at_once_with_its_cause(tmp_path: Path) -> None:
    url = URL.create("postgresql+psycopg", username="bosh", password="s3cret-pw", host="127.0.0.1", port=free_port())
    config = DbConfig(url=url.render_as_string(hide_password=False), connect_timeout=2)
    pool = build_read_pool(config)
    assert pool is not None
    store = SettingsStore(build_engine(config), pool)
    store._schema_ready = True  # as after a start while it was up: the read itself must fail

    async def down() -> tuple[str, float]:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as failed:
            await store.get_async("vm-1")
        return str(failed.value), time.monotonic() - started

    said, took = on_a_loop(store, down)
    assert said.startswith("database unavailable (postgresql+psycopg://bosh:***@127.0.0.1")
    assert "refused" in said
    assert "s3cret-pw" not in said
    assert took < 1.0
    assert pool._opened == 0  # the failed connection's slot is free again


def test_the_pool_refuses_to_wait_forever() -> None:
    async def exhausted() -> None:
        pool = ReadPool({}, size=0, timeout=0.1, recycle=60)
        with pytest.raises(PoolExhausted):
            await pool.fetchall("SELECT 1", ())

    asyncio.run(exhausted())


def test_the_loop_s_connections_carry_the_query_timeout_and_the_registry_s_name(postgres_url: URL) -> None:
    store = store_for(postgres_url, query_timeout=0.4)

    async def settings() -> tuple[list[tuple[object, ...]], str]:
        pool = pool_of(store)
        named = await pool.fetchall(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')", ()
        )
        started = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError):  # the server ends it: no read outlives its request
            await pool.fetchall("SELECT pg_sleep(5)", ())
        return named, f"{time.monotonic() - started:.1f}"

    named, took = on_a_loop(store, settings)
    assert named == [("boshreg-registry", "400ms")]
    assert float(took) < 2


def test_tls_and_server_options_reach_asyncpg_as_libpq_would_take_them() -> None:
    arguments, unknown = asyncpg_arguments(
        {
            "host": "db.example",
            "port": "5433",
            "dbname": "bosh",
            "user": "registry",
            "password": "s3cret-pw",
            "connect_timeout": 5,
            "application_name": "boshreg-registry",
            "options": "-c statement_timeout=10000 -csearch_path=registry",
            "sslmode": "verify-full",
            "sslrootcert": "/var/vcap/jobs/registry/config/db_ca.pem",
            "keepalives_idle": 10,
        }
    )
    assert unknown == []
    assert arguments["port"] == 5433
    assert arguments["database"] == "bosh"
    assert arguments["timeout"] == 5.0
    assert arguments["server_settings"] == {
        "application_name": "boshreg-registry",
        "statement_timeout": "10000",
        "search_path": "registry",
    }
    assert (
        arguments["dsn"]
        == "postgresql://?sslmode=verify-full&sslrootcert=%2Fvar%2Fvcap%2Fjobs%2Fregistry%2Fconfig%2Fdb_ca.pem"
    )


def test_an_option_only_libpq_knows_keeps_the_reads_in_threads_and_says_so(
    postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    assert asyncpg_arguments({"options": "--geqo=off", "gssencmode": "disable"})[1] == ["options", "gssencmode"]
    caplog.set_level(logging.WARNING, logger="boshreg.registry.engine")
    store = store_for(postgres_url, connection_options={"gssencmode": "disable"}, max_connections=4)
    try:
        assert store.read_pool is None
        assert isinstance(store.engine.pool, QueuePool)
        assert store.engine.pool.size() == 4  # every connection goes to the threads then
        store.put("vm-1", SETTINGS)
        assert store.read("vm-1").settings == SETTINGS
    finally:
        store.close()
    assert "db.connection_options gssencmode: not an option asyncpg takes" in caplog.text


def test_reads_arriving_together_each_get_their_own_settings_and_generation(postgres_url: URL) -> None:
    store = store_for(postgres_url)
    for n in range(5):
        store.put(f"vm-{n}", f'{{"agent_id": "a-{n}"}}')
    store.revoke("vm-2")  # its per-VM credential is of generation 1 now
    wanted = [f"vm-{n % 7}" for n in range(140)]  # vm-5 and vm-6 are not stored; every id asked for 20 times

    async def together() -> list[tuple[str | None, int]]:
        found = await asyncio.gather(*(store.get_async(instance_id) for instance_id in wanted))
        return [(stored.settings, stored.generation) for stored in found]

    expected = [(f'{{"agent_id": "a-{n % 7}"}}' if n % 7 < 5 else None, 1 if n % 7 == 2 else 0) for n in range(140)]
    assert on_a_loop(store, together) == expected


def test_an_id_postgresql_cannot_hold_reads_as_not_stored_without_failing_the_reads_beside_it(
    postgres_url: URL,
) -> None:
    store = store_for(postgres_url)
    store.put("vm-1", SETTINGS)

    async def together() -> list[str | None]:
        found = await asyncio.gather(*(store.get_async(i) for i in ("vm-1", "x\x00", "bad\udcff", "vm-1")))
        return [stored.settings for stored in found]

    assert on_a_loop(store, together) == [SETTINGS, None, None, SETTINGS]


def test_what_the_loop_s_driver_fails_with_is_worded_as_unavailable_or_left_as_a_fault() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    assert unavailable_cause(refused) == "Connection refused ([Errno 111] Connect call failed ('127.0.0.1', 5432))"
    assert unavailable_cause(TimeoutError()) == "no answer within db.connect_timeout"
    assert unavailable_cause(asyncpg.AdminShutdownError("terminating connection")) == "terminating connection"
    assert unavailable_cause(asyncpg.UndefinedTableError("no such table")) is None  # the schema's fault: a 500
    assert unavailable_cause(asyncpg_base.DataError("invalid input for query argument $1")) is None
