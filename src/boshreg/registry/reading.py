"""Reading a registry's database from a command (`events`, `fleet`): one place that opens it, runs the
query, closes it, and turns a database that is away into one error that says what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from boshreg.errors import BoshregError
from boshreg.registry.config import RegistryConfig
from boshreg.registry.engine import build_engine
from boshreg.registry.store import SettingsStore, StoreUnavailable

T = TypeVar("T")


class DatabaseUnavailable(BoshregError):
    """The registry's database cannot be read now."""


def read_database(config: RegistryConfig, where: str, query: Callable[[Engine], T]) -> T:
    """``query`` run on the registry's database (its tables made if missing); ``where`` names it in errors."""
    store = SettingsStore(build_engine(config.db))
    try:
        store.ensure_schema()
        return query(store.engine)
    except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
        cause = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot read the registry's database ({where}): {cause}", "start the database, or give --endpoint"
        ) from None
    finally:
        store.close()


def stored_settings(config: RegistryConfig, where: str, instance_id: str) -> str | None:
    """One instance's settings text as stored, or None."""
    return read_database(config, where, lambda engine: SettingsStore(engine).get(instance_id))
