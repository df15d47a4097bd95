"""The layout's rules, checked on the source: who may import whom, and one definition per word and fact."""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "boshreg"


def modules(*parts: str) -> Iterator[Path]:
    for part in parts:
        target = PACKAGE / part
        yield from sorted(target.rglob("*.py")) if target.is_dir() else [target]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


OPTIONAL_IN_VMS = ("pycdlib", "dns")  # the `agent` extra: imported only when present, never needed


def test_what_ships_into_vms_imports_only_the_standard_library_and_itself() -> None:
    allowed = ("boshreg.bootstrap", "boshreg.errors", "boshreg.agent")
    for path in modules("bootstrap", "errors.py", "agent"):
        for name in imported(path):
            inside = name.startswith("boshreg")
            if "bootstrap" in path.parts or path.name == "errors.py":
                assert not inside or name.startswith(allowed[:2]), f"{path.name} imports {name}"
            assert not inside or name.startswith(allowed), f"{path.name} imports {name}"
            if not inside:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in OPTIONAL_IN_VMS, f"{path.name} imports {name}"


@pytest.mark.parametrize("forbidden", ["boshreg.agent", "boshreg.cpi", "boshreg.testcloud", "boshreg.cli"])
def test_the_registry_does_not_import_the_other_sides(forbidden: str) -> None:
    for path in modules("registry"):
        assert not any(name.startswith(forbidden) for name in imported(path)), f"{path.name} imports {forbidden}"


def string_constants(path: Path) -> Iterator[tuple[int, str]]:
    """Every string literal that is not a docstring (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


# A word, label, path or address, and the one module allowed to spell it in code.
ONE_DEFINITION = [
    ("portable", "bootstrap/verdict.py"),
    ("pinned", "bootstrap/verdict.py"),
    ("broken", "bootstrap/verdict.py"),
    ("config-2", "bootstrap/nova.py"),
    ("/var/vcap/bosh/user_data.json", "bootstrap/nova.py"),
    ("/var/vcap/bosh/agent.json", "bootstrap/nova.py"),
    ("169.254.169.254", "bootstrap/nova.py"),
    ("ec2/latest/user-data", "bootstrap/nova.py"),
    ("2.57", "bootstrap/nova.py"),
]


@pytest.mark.parametrize(("text", "home"), ONE_DEFINITION, ids=[text for text, _ in ONE_DEFINITION])
def test_each_word_and_fact_is_spelled_in_one_module(text: str, home: str) -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in modules(".")
        for line, value in string_constants(path)
        if text in value.split() or value == text or (len(text) > 8 and text in value)
    ]
    assert all(place.startswith(home) for place in found), found


def test_a_registry_on_sqlite_loads_neither_postgresql_driver() -> None:
    """asyncpg (~3 MiB a worker) is loaded where PostgreSQL is read on the event loop, psycopg (~9 MiB with its
    libpq and OpenSSL) where the trail or the store is on PostgreSQL: not by every registry. The probe writes
    the trail as a worker does, so the lazily imported COPY path is proven not to be reached on SQLite."""
    probe = (
        "import sys\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from boshreg.registry import server, store, engine\n"
        "from boshreg.registry.audit import AuditLog, Event, query_events\n"
        "from boshreg.registry.config import DbConfig\n"
        "engine.build_read_pool(DbConfig(adapter='sqlite', database=':memory:'))\n"
        "settings = store.SettingsStore(engine.build_engine(DbConfig(adapter='sqlite', database=sys.argv[1])))\n"
        "settings.ensure_schema()\n"
        "trail = AuditLog(settings.engine, max_age=timedelta(days=1), max_rows=10)\n"
        "trail._enqueue(Event(datetime.now(UTC), 'write', 'vm-1', '10.0.0.1', 'admin', 200, 'ok'))\n"
        "trail.flush()\n"
        "assert [event.instance_id for event in query_events(settings.engine)] == ['vm-1']\n"
        "print(sorted({'asyncpg', 'psycopg'} & set(sys.modules)))\n"
    )
    with tempfile.TemporaryDirectory() as data:
        loaded = subprocess.run(
            [sys.executable, "-c", probe, f"{data}/registry.db"], capture_output=True, text=True, check=True
        ).stdout
    assert loaded.strip() == "[]"


def test_the_registrys_process_does_not_load_the_http_client_or_the_test_clouds_server() -> None:
    """``boshreg serve`` imports the whole command line; httpx (with, where installed, its own command line's
    rich and pygments) and uvicorn are for the commands that talk to a registry and for the test cloud's
    emulators. In every registry process they were ~7 MiB of two workers' peak RSS (make bench)."""
    probe = "import sys\nimport boshreg.cli\nprint(sorted({'httpx', 'uvicorn'} & set(sys.modules)))\n"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
