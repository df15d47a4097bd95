"""The registry's tables: the original's ``registry_instances``, exactly, and our ``registry_events`` and
``registry_credentials``.

The original ignores tables it does not know, so the audit trail can live in the same database.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, SmallInteger, String, Table, Text
from sqlalchemy.dialects import mysql

metadata = MetaData()

# Binary collation on MySQL: instance ids are case-sensitive everywhere else.
_INSTANCE_ID = String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")

registry_instances = Table(
    "registry_instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", _INSTANCE_ID, nullable=False, unique=True),
    # LONGTEXT on MySQL for tables we create: TEXT stops at 64 KiB, below our body limit.
    Column("settings", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
)

registry_events = Table(
    "registry_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(16), nullable=False),  # read, write, delete, credentials, revoke, events
    Column("instance_id", String(255), nullable=False),
    Column("client", String(64), nullable=False),
    Column("credential", String(16), nullable=False),  # admin, per-vm, anonymous, refused
    Column("status", SmallInteger, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("count", Integer, nullable=True),  # refused requests aggregated into this event (NULL: one)
    Index("registry_events_instance_at", "instance_id", "at"),
    Index("registry_events_at", "at"),
)

# The generation of each instance's per-VM credential, where it is not 0: raised by deleting the
# instance's settings or by revoking its credential, in the same transaction as the write.
registry_credentials = Table(
    "registry_credentials",
    metadata,
    Column("instance_id", _INSTANCE_ID, primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

# Microseconds on MySQL too (its DATETIME keeps whole seconds): a refusal and the read before it must not tie.
_TIME = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

# What the registry knows of each stored instance, kept up by the audit trail's writer (``fleet``): when
# its settings were stored and changed, their size, its reads and refusals. Rows are created by writes and
# successful reads only (a stranger's reads of made-up ids add none) and removed with the settings.
registry_fleet = Table(
    "registry_fleet",
    metadata,
    Column("instance_id", _INSTANCE_ID, primary_key=True),
    Column("stored_at", _TIME, nullable=True),  # the first write since it was (re)created
    Column("changed_at", _TIME, nullable=True),  # the last write
    Column("size", Integer, nullable=True),  # bytes of the settings, as last written through boshreg
    Column("reads", Integer, nullable=False),
    Column("first_read_at", _TIME, nullable=True),
    Column("last_read_at", _TIME, nullable=True),
    Column("last_read_client", String(64), nullable=True),
    Column("last_read_credential", String(16), nullable=True),
    Column("refusals", Integer, nullable=False),
    Column("last_refusal_at", _TIME, nullable=True),
    Column("last_refusal_status", SmallInteger, nullable=True),
    Column("last_refusal_outcome", String(32), nullable=True),
    Column("last_refusal_client", String(64), nullable=True),
)

# MySQL/MariaDB only: a counter every boshreg write raises as the last statement of its transaction. MySQL has
# no notifications; each worker reads this one row every ``cache.CHANGE_POLL_SECONDS`` and drops its read
# cache when the number moved (``cache.ChangeCounter``). SQLite has the marker file, PostgreSQL LISTEN/NOTIFY.
registry_changes = Table(
    "registry_changes",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),  # always 1
    Column("version", BigInteger, nullable=False),
)
