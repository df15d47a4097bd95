"""The read cache never serves a write's old settings beyond its stated bound, on any backend.

Bounds (README, "The read cache"): in the process that wrote, none; other workers and replicas on one
SQLite file, none; writers other than boshreg on SQLite, FOREIGN_CHECK_SECONDS; PostgreSQL and MySQL
replicas, http.cache_seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import httpx
from sqlalchemy import URL, create_engine, text

from boshreg.registry.cache import (
    ENTRY_MAX_BYTES,
    FOREIGN_CHECK_SECONDS,
    Answer,
    NoWatch,
    ResponseCache,
    SharedMarker,
)
from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, RegistryProcess

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


def test_replicas_on_a_networked_database_agree_within_their_bound(
    server_database_url: URL, start_registry: RegistryLauncher
) -> None:
    """PostgreSQL: within NOTIFY's delivery, however long entries may live; MySQL: within http.cache_seconds."""
    postgres = server_database_url.get_backend_name() == "postgresql"
    bound = NOTIFY_BOUND if postgres else 0.5
    first = start_registry(server_database_url, cache_seconds=0.5, workers=2)
    second = start_registry(server_database_url, cache_seconds=0.5, workers=2)
    put(first, "vm-networked", 1)
    assert versions_read(second, "vm-networked") == {1}
    for version in range(2, 5):
        put(first, "vm-networked", version)
        assert versions_read(first, "vm-networked", reads=5) == {version}  # the writer's own process: at once
        time.sleep(bound + (0 if postgres else 0.2))
        assert versions_read(second, "vm-networked") == {version}
    if postgres:  # the cache is really in use: a write that sends no notification is not seen at once
        engine = create_engine(server_database_url)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE registry_instances SET settings = :s WHERE instance_id = 'vm-networked'"),
                {"s": '{"version": 99}'},
            )
        engine.dispose()
        assert 4 in versions_read(second, "vm-networked", reads=4)
        assert "not listening" not in second.stderr()


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
