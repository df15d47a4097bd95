"""A registry started with a config file, as a service manager starts it: nothing written where it stands."""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port


def started_in(cwd: Path, rest_of_config: str, start_registry: RegistryLauncher) -> RegistryProcess:
    """A registry run from ``cwd`` with a config of the http section and ``rest_of_config``."""
    port = free_port()
    path = cwd.parent / "registry.yml"
    path.write_text(f"http: {{host: 127.0.0.1, port: {port}, password: {ADMIN_PASSWORD}}}\n{rest_of_config}")
    process = RegistryProcess(cwd, ["--config", str(path)], port)
    start_registry.started.append(process)
    return process.start()


def test_without_a_db_section_the_data_lives_in_data_dir(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    cwd, data = tmp_path / "cwd", tmp_path / "var-lib-boshreg"
    cwd.mkdir()
    registry = started_in(cwd, f"data_dir: {data}\n", start_registry)
    stored = httpx.put(f"{registry.url}/instances/vm-1/settings", content=b"{}", auth=("admin", ADMIN_PASSWORD))
    assert stored.status_code == 200
    assert sorted(p.name for p in data.iterdir()) >= ["instance-secret", "registry.db"]
    assert data.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in cwd.iterdir() if not p.name.startswith("registry-")] == []  # only the test's logs


def test_with_an_sqlite_database_the_data_lives_beside_it(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    cwd, db_dir = tmp_path / "cwd", tmp_path / "db"
    cwd.mkdir()
    db_dir.mkdir(mode=0o700)
    started_in(cwd, f"db: sqlite:///{db_dir}/registry.db\n", start_registry)
    assert (db_dir / "instance-secret").exists()
    assert not (cwd / ".boshreg").exists()
