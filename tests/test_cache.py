"""The read cache never serves a write's old settings beyond its stated bound, on any backend.

Bounds (README, "The read cache"): in the process that wrote, none; other workers and replicas on one
SQLite file, none; writers other than boshreg on SQLite, FOREIGN_CHECK_SECONDS; PostgreSQL and MySQL
replicas, NOTIFY's delivery; MySQL replicas, the change counter's interval (CHANGE_POLL_SECONDS); writers other
than boshreg on PostgreSQL, FOREIGN_EXPIRY_SECONDS, and on MySQL, http.cache_seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import URL, create_engine, insert, text

from boshreg.registry.cache import (
    CHANGE_POLL_SECONDS,
    ENTRY_MAX_BYTES,
    FOREIGN_CHECK_SECONDS,
    Answer,
    ChangeCounter,
    NoWatch,
    ResponseCache,
    SharedMarker,
    ensure_change_counter,
    settings_digest,
)
from boshreg.registry.config import DbConfig
from boshreg.registry.engine import build_engine
from boshreg.registry.store import SettingsStore, StoreError
from boshreg.registry.tables import metadata, registry_instances
from conftest import RegistryLauncher, usable_backend
from support.databases import url_text
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port

ADMIN = ("admin", ADMIN_PASSWORD)
READS = 40


def put(registry: RegistryProcess, name: str, version: int) -> None:
    response = httpx.put(
        f"{registry.url}/instances/{name}/settings", content=json.dumps({"version": version}), auth=ADMIN
    )
    assert response.status_code == 200


def versions_read(registry: RegistryProcess, name: str, reads: int = READS) -> set[int]:
    """The versions seen by ``reads`` GETs, each on a new connection (so that every worker answers some)."""
    seen = set()
    for _ in range(reads):
        response = httpx.get(f"{registry.url}/instances/{name}/settings", auth=ADMIN, headers={"Connection": "close"})
        assert response.status_code == 200
        seen.add(json.loads(response.json()["settings"])["version"])
    return seen


def test_a_write_through_one_worker_is_read_at_once_through_the_other(start_registry: RegistryLauncher) -> None:
    registry = start_registry(workers=2)
    put(registry, "vm-workers", 1)
    assert versions_read(registry, "vm-workers") == {1}  # both workers have it cached now
    for version in range(2, 6):
        put(registry, "vm-workers", version)
        assert versions_read(registry, "vm-workers", reads=10) == {version}


def test_a_write_through_one_replica_is_read_at_once_through_another(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path}/shared.db"
    first, second = start_registry(database), start_registry(database)
    put(first, "vm-replicas", 1)
    assert versions_read(second, "vm-replicas") == {1}
    put(first, "vm-replicas", 2)
    assert versions_read(second, "vm-replicas") == {2}
    first_delete = httpx.delete(f"{first.url}/instances/vm-replicas/settings", auth=ADMIN)
    assert first_delete.status_code == 200
    assert httpx.get(f"{second.url}/instances/vm-replicas/settings", auth=ADMIN).status_code == 404


def test_a_write_by_another_program_on_the_sqlite_file_is_seen_within_its_bound(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(f"sqlite:///{tmp_path}/foreign.db")
    put(registry, "vm-foreign", 1)
    assert versions_read(registry, "vm-foreign") == {1}
    with sqlite3.connect(tmp_path / "foreign.db") as conn:  # as the original registry would write it
        conn.execute(
            "UPDATE registry_instances SET settings = ? WHERE instance_id = ?", ('{"version": 2}', "vm-foreign")
        )
    time.sleep(FOREIGN_CHECK_SECONDS + 0.3)
    assert versions_read(registry, "vm-foreign") == {2}


NOTIFY_BOUND = 0.1  # PostgreSQL: a notification reaches every listening worker within this (README)
COUNTER_BOUND = CHANGE_POLL_SECONDS + 0.2  # MySQL: the counter's interval and a round trip, with room (README)


def test_replicas_on_a_networked_database_agree_within_their_bound(
    server_database_url: URL, start_registry: RegistryLauncher
) -> None:
    """PostgreSQL: within NOTIFY's delivery; MySQL: within the change counter's interval. Entries live a
    minute here, so only those can explain what is seen."""
    postgres = server_database_url.get_backend_name() == "postgresql"
    bound = NOTIFY_BOUND if postgres else COUNTER_BOUND
    first = start_registry(server_database_url, cache_seconds=60, workers=2)
    second = start_registry(server_database_url, cache_seconds=60, workers=2)
    put(first, "vm-networked", 1)
    assert versions_read(second, "vm-networked") == {1}
    for version in range(2, 5):
        put(first, "vm-networked", version)
        time.sleep(bound)  # the writer's other worker too hears of it by the same way
        assert versions_read(first, "vm-networked", reads=10) == {version}
        assert versions_read(second, "vm-networked") == {version}
    # The cache is really in use: a write by another program (no notification, no counter) is not seen at once.
    write_as_another_program(server_database_url, "vm-networked", 99)
    assert 4 in versions_read(second, "vm-networked", reads=4)
    assert "not listening" not in second.stderr()
    assert "not reading" not in second.stderr()


@pytest.fixture
def mysql_url(tmp_path: Path) -> Iterator[URL]:
    with usable_backend("mysql").fresh_database(tmp_path) as url:
        yield url


@pytest.mark.mysql
def test_a_write_by_another_program_on_mysql_is_seen_within_cache_seconds(
    mysql_url: URL, start_registry: RegistryLauncher
) -> None:
    registry = start_registry(mysql_url, cache_seconds=1, workers=2)
    put(registry, "vm-foreign-mysql", 1)
    assert versions_read(registry, "vm-foreign-mysql") == {1}
    write_as_another_program(mysql_url, "vm-foreign-mysql", 2)
    time.sleep(1 + 0.3)
    assert versions_read(registry, "vm-foreign-mysql") == {2}


def write_as_another_program(url: URL, name: str, version: int) -> None:
    """As the original registry would write it: the row alone."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE registry_instances SET settings = :s WHERE instance_id = :name"),
            {"s": json.dumps({"version": version}), "name": name},
        )
    engine.dispose()


LIFE = 2.0  # http.cache_seconds of the checking tests: a check every 0.5 s, each answer due 1 s before it expires


def until_heard(cache: ResponseCache, seconds: float = 10.0) -> None:
    """Wait until the cache's watch hears the database (until then its version moves at every call, so nothing
    is kept), then let the cache take in the version it now hears."""
    deadline = time.monotonic() + seconds
    while cache.version() != cache.version():
        assert time.monotonic() < deadline, "the change counter was never heard"
        time.sleep(0.05)
    assert cache.get("vm-none") is None


@pytest.mark.mysql
def test_mysql_answers_unchanged_in_the_database_live_on_and_changed_ones_go_within_cache_seconds(
    mysql_url: URL,
) -> None:
    """Hot answers must not be read again only because they aged (those reads set the hot GET's p99 on MariaDB),
    and what another program changed must still be gone within the cache's life."""
    engine = create_engine(mysql_url)
    metadata.create_all(engine)
    ensure_change_counter(engine)
    kept, changed = '{"name": "kept", "note": "é ✓ 𝄞"}', '{"name": "changed"}'
    with engine.begin() as conn:
        conn.execute(insert(registry_instances), [{"instance_id": "vm-kept", "settings": kept}])
        conn.execute(insert(registry_instances), [{"instance_id": "vm-changed", "settings": changed}])
        conn.execute(insert(registry_instances), [{"instance_id": "vm-deleted", "settings": changed}])
    counter = ChangeCounter(build_engine(DbConfig(url=url_text(mysql_url))))
    try:
        cache = ResponseCache(counter, max_bytes=1 << 20, max_seconds=LIFE)
        until_heard(cache)
        version = cache.version()
        for name, settings in (("vm-kept", kept), ("vm-changed", changed), ("vm-deleted", changed)):
            cache.put(name, Answer(name.encode(), 0), version, time.monotonic(), settings)
        written = time.monotonic()
        with engine.begin() as conn:  # as the original registry writes: no change counter
            conn.execute(text("UPDATE registry_instances SET settings = '{}' WHERE instance_id = 'vm-changed'"))
            conn.execute(text("DELETE FROM registry_instances WHERE instance_id = 'vm-deleted'"))
        while (cache.get("vm-changed") or cache.get("vm-deleted")) and time.monotonic() < written + 2:
            time.sleep(0.02)
        assert time.monotonic() - written <= LIFE + 0.3
        time.sleep(2 * LIFE)  # without the checks, it would have expired by LIFE after it was kept
        assert cache.get("vm-kept") == Answer(b"vm-kept", 0)
    finally:
        counter.close()
        engine.dispose()


@pytest.mark.mysql
def test_a_check_mysql_refuses_ends_the_checks_not_the_hearing(
    mysql_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers are then kept for their life, as before there were checks, and writes are still heard."""
    engine = create_engine(mysql_url)
    ensure_change_counter(engine)  # and no settings table: the check's query is refused
    counter = ChangeCounter(engine)
    try:
        cache = ResponseCache(counter, max_bytes=1 << 20, max_seconds=0.4)
        until_heard(cache)
        cache.put("vm-1", Answer(b"answer", 0), cache.version(), time.monotonic(), "{}")
        deadline = time.monotonic() + 10
        while "not checked" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "answers not checked against MySQL (ProgrammingError); they expire instead" in caplog.text
        assert cache.version() == cache.version()  # still hearing
        time.sleep(0.45)
        assert cache.get("vm-1") is None  # expired after its life
    finally:
        counter.close()
        engine.dispose()


class CheckingWatch(NoWatch):
    """A watch that checks answers (as MySQL's does), driven by the test."""

    def attach(self, cache: ResponseCache) -> bool:
        return True


def test_a_check_leaves_alone_an_answer_replaced_or_dropped_since_it_was_taken() -> None:
    """The check runs in another thread: what it saw must never bring back or prolong an answer the loop has
    since replaced (this process wrote) or dropped."""
    cache = ResponseCache(CheckingWatch(), max_bytes=1 << 20, max_seconds=1.0)
    put_at = time.monotonic()
    for name in ("vm-rewritten", "vm-dropped", "vm-same"):
        cache.put(name, Answer(b"old", 0), cache.version(), put_at, "old")
    time.sleep(0.5)  # each expires by put_at + 1.0: within two checks (0.25 s apart) of now, so due
    due = cache.due_for_check()
    assert {name for name, _ in due} == {"vm-rewritten", "vm-dropped", "vm-same"}
    cache.forget("vm-rewritten")
    cache.put("vm-rewritten", Answer(b"new", 0), cache.version(), time.monotonic(), "new")
    cache.forget("vm-dropped")
    cache.checked(due, {name: settings_digest("old") for name, _ in due}, time.monotonic())
    assert cache.get("vm-rewritten") == Answer(b"new", 0)
    assert cache.get("vm-dropped") is None
    time.sleep(max(0.0, put_at + 1.1 - time.monotonic()))  # past its first life, within the checked one
    assert cache.get("vm-same") == Answer(b"old", 0)


@pytest.mark.mysql
def test_a_worker_that_cannot_read_the_change_counter_keeps_nothing(mysql_url: URL) -> None:
    away = create_engine(mysql_url.set(host="127.0.0.1", port=free_port()), connect_args={"connect_timeout": 1})
    counter = ChangeCounter(away)
    try:
        cache = ResponseCache(counter, max_bytes=10_000, max_seconds=60)
        cache.put("vm-1", Answer(b"{}", 0), cache.version(), time.monotonic())
        assert cache.get("vm-1") is None
        assert counter.version() != counter.version()
    finally:
        counter.close()
        away.dispose()


# --- the cache itself, in process --------------------------------------------------------------------


class CountingWatch(NoWatch):
    """A watch whose version the test moves, as another process's write would."""

    def __init__(self) -> None:
        self.value = 0

    def version(self) -> int:
        return self.value


def test_least_recently_used_answers_go_first_when_the_cache_is_full() -> None:
    cache = ResponseCache(NoWatch(), max_bytes=3000, max_seconds=None)
    for name in ("a", "b", "c"):
        cache.put(name, Answer(b"x" * 1000, 0), cache.version(), time.monotonic())
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", Answer(b"x" * 1000, 0), cache.version(), time.monotonic())
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.size_bytes <= 3000


def test_answers_over_the_entry_limit_are_not_kept() -> None:
    cache = ResponseCache(NoWatch(), max_bytes=10 * ENTRY_MAX_BYTES, max_seconds=None)
    cache.put("big", Answer(b"x" * (ENTRY_MAX_BYTES + 1), 0), cache.version(), time.monotonic())
    assert cache.get("big") is None


def test_a_read_that_began_before_a_write_is_not_kept() -> None:
    watch = CountingWatch()
    cache = ResponseCache(watch, max_bytes=1 << 20, max_seconds=None)
    before = cache.version()
    cache.forget("vm")  # this process wrote while the read was on its way
    cache.put("vm", Answer(b"old", 0), before, time.monotonic())
    assert cache.get("vm") is None
    before = cache.version()
    watch.value += 1  # another process wrote
    cache.put("vm", Answer(b"old", 0), before, time.monotonic())
    assert cache.get("vm") is None


def test_another_process_writing_empties_the_cache() -> None:
    watch = CountingWatch()
    cache = ResponseCache(watch, max_bytes=1 << 20, max_seconds=None)
    cache.put("vm", Answer(b"answer", 0), cache.version(), time.monotonic())
    assert cache.get("vm") == Answer(b"answer", 0)
    watch.value += 1
    assert cache.get("vm") is None


def test_entries_expire_after_max_seconds() -> None:
    cache = ResponseCache(NoWatch(), max_bytes=1 << 20, max_seconds=0.05)
    cache.put("vm", Answer(b"answer", 0), cache.version(), time.monotonic())
    assert cache.get("vm") == Answer(b"answer", 0)
    time.sleep(0.06)
    assert cache.get("vm") is None


def test_workers_forked_from_one_process_never_write_the_same_change_marker(tmp_path: Path) -> None:
    """Readers compare the marker for difference: a worker that wrote the value another had just written
    would leave that one's readers serving what it changed. A counter copied by fork would do just that."""
    database = tmp_path / "registry.db"
    sqlite3.connect(database).close()
    marker = SharedMarker(database)
    marker.changed_here()  # the parent's counter exists before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's own exit status carries the outcome
        marker.changed_here()
        os.write(write_end, b"x")
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"x"
    os.waitpid(child, 0)
    written_by_child = marker.version()
    marker.changed_here()
    assert marker.version() != written_by_child
    marker.close()


@pytest.mark.mysql
def test_mysql_writes_raise_the_change_counter_in_their_own_transaction(mysql_url: URL) -> None:
    """Every committed write moves the counter; a refused one does not; writers of two processes (here two
    stores, each with its own group commit) locking the same rows in other orders never deadlock over it."""
    stores = [SettingsStore(build_engine(DbConfig(url=url_text(mysql_url)))) for _ in range(2)]
    for store in stores:
        store.ensure_schema()
    engine = stores[0].engine

    def counter() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT version FROM registry_changes WHERE id = 1")).scalar_one())

    try:
        before = counter()
        stores[0].put("vm-counted", "{}")
        assert counter() == before + 1
        with pytest.raises(StoreError):
            stores[0].put("vm-" + "x" * 300, "{}")  # an id longer than its column: refused, rolled back
        assert counter() == before + 1
        stores[0].revoke("vm-counted")
        assert stores[0].delete("vm-counted")
        assert counter() == before + 3
        names = [f"vm-{n}" for n in range(12)]
        failures: list[BaseException] = []

        def writes(store: SettingsStore, order: list[str]) -> None:
            for name in order:
                try:
                    store.put(name, json.dumps({"by": id(store)}))
                except BaseException as exc:
                    failures.append(exc)

        threads = [
            threading.Thread(target=writes, args=(stores[n % 2], names if n % 2 else names[::-1])) for n in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert counter() > before + 3
    finally:
        for store in stores:
            store.engine.dispose()
