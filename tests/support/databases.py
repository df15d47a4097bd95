"""Real database backends for the store and API suites: a fresh database per test.

PostgreSQL and MariaDB are found at the URLs in BOSHREG_TEST_POSTGRES_URL / BOSHREG_TEST_MYSQL_URL
(defaults: this machine's local servers). A backend listed in BOSHREG_REQUIRE must be reachable:
CI sets it so that a missing server fails the run instead of being skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "BOSHREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("BOSHREG_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
BACKENDS = ("sqlite", "postgres", "mysql")


def required() -> set[str]:
    """The backends and tools that must be there (BOSHREG_REQUIRE); the rest may be skipped, loudly."""
    return {name.strip() for name in os.environ.get("BOSHREG_REQUIRE", "sqlite").split(",") if name}


@dataclass(frozen=True)
class Backend:
    """One database server the suite can create throw-away databases on."""

    name: str
    admin_url: URL | None  # None for SQLite: a file per test

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot be used now, or None when it answers."""
        if self.admin_url is None:
            return None
        try:
            engine = create_engine(self.admin_url, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
        except Exception as exc:
            return f"{self.name} at {self.admin_url.render_as_string(hide_password=True)}: {exc}".splitlines()[0]
        return None

    @contextmanager
    def fresh_database(self, directory: Path) -> Iterator[URL]:
        """A new empty database, dropped afterwards."""
        if self.admin_url is None:
            yield URL.create("sqlite", database=str(directory / "registry.db"))
            return
        name = f"boshreg_t_{secrets.token_hex(6)}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                suffix = " CHARACTER SET utf8mb4" if self.name == "mysql" else ""
                conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
            yield self.admin_url.set(database=name)
        finally:
            with admin.connect() as conn:
                force = " WITH (FORCE)" if self.name == "postgres" else ""
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
            admin.dispose()


def backend(name: str) -> Backend:
    if name == "postgres":
        return Backend(name, make_url(POSTGRES_ADMIN_URL))
    if name == "mysql":
        return Backend(name, make_url(MYSQL_ADMIN_URL))
    return Backend(name, None)


def url_text(url: URL) -> str:
    """A URL as text with its password, for a config file."""
    return url.render_as_string(hide_password=False)


# The original registry's table as its Sequel migration creates it on each database.
_ID_COLUMN = {
    "sqlite": "id integer NOT NULL PRIMARY KEY AUTOINCREMENT",
    "postgresql": "id serial PRIMARY KEY",
    "mysql": "id integer NOT NULL PRIMARY KEY AUTO_INCREMENT",
}


def original_table_ddl(url: URL, *, unique: bool = True) -> str:
    """CREATE TABLE for registry_instances as the original created it (``unique=False``: a damaged copy)."""
    unique_clause = " UNIQUE" if unique else ""
    return (
        f"CREATE TABLE registry_instances ({_ID_COLUMN[url.get_backend_name()]}, "
        f"instance_id varchar(255) NOT NULL{unique_clause}, settings text NOT NULL)"
    )
