"""The zero-config data directory: an SQLite database and a generated admin password.

``boshreg serve`` with no config file must be safe and useful at once: never the well-known
``admin:admin``, and the same password on every restart so that deployed VMs keep working.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import string
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from boshreg.bootstrap.credentials import generate_secret
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.errors import BoshregError
from boshreg.registry.config import DEFAULT_PORT, SERVICE_DATA_DIR, DbConfig, HttpConfig, RegistryConfig

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".boshreg")
PASSWORD_FILE = "admin-password"
INSTANCE_SECRET_FILE = "instance-secret"
DATABASE_FILE = "registry.db"
PORT_FILE = "port"  # the port the zero-config registry last served on
WELL_KNOWN_PASSWORDS = frozenset({"admin", "password", "changeme", "registry", "bosh", "secret", "c1oudc0w"})


class DataDirError(BoshregError):
    """The data directory cannot be created or read; the message says which path and why."""


def admin_password(data_dir: Path) -> str:
    """The data directory's admin password, generated (mode 0600) on first use."""
    return _kept_secret(data_dir, PASSWORD_FILE, generate_password)


def instance_secret(data_dir: Path) -> str:
    """The data directory's instance secret (the key of per-VM credentials), generated on first use."""
    return _kept_secret(data_dir, INSTANCE_SECRET_FILE, generate_secret)


def _kept_secret(data_dir: Path, name: str, generate: Callable[[], str]) -> str:
    """A secret kept in ``data_dir/name`` (mode 0600): read when there, created atomically when not."""
    path = data_dir / name
    try:
        private_directory(data_dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read_password(path)
        secret = generate()
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
        return secret
    except OSError as exc:
        raise DataDirError(
            f"cannot use data directory {data_dir}: {exc.strerror}; pass --data-dir with a writable directory"
        ) from None


def private_directory(data_dir: Path) -> None:
    """The data directory, created 0700; an existing looser one is named with the chmod that fixes it."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is open to other users (mode %o); restrict it: chmod 700 %s", data_dir, mode, data_dir)


def generate_password(length: int = 24) -> str:
    """Letters and digits only (about 143 bits): safe unquoted in URLs, YAML and shell arguments."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def read_admin_password(data_dir: Path) -> str | None:
    """The admin password if this data directory has one; never creates it."""
    path = data_dir / PASSWORD_FILE
    try:
        return _read_password(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror}") from None


def _read_password(path: Path) -> str:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users; restrict it: chmod 600 %s", path, path)
    password = path.read_text(encoding="ascii").strip()
    if not password:
        raise DataDirError(f"{path} is empty; delete it to have a new password generated")
    if password.lower() in WELL_KNOWN_PASSWORDS:
        raise DataDirError(
            f"{path} holds a well-known password ({password!r}): anyone could read every VM's settings; delete it "
            "to have one generated (and update the VMs' endpoints)"
        )
    return password


def config_data_dir(config: RegistryConfig) -> Path:
    """Where a registry started with a config file keeps its data: ``data_dir``, else beside its SQLite
    database, else /var/lib/boshreg; never the current directory."""
    if config.data_dir:
        return Path(config.data_dir)
    url = make_url(config.db.url) if config.db.url else None
    backend = url.get_backend_name() if url is not None else config.db.adapter
    database = url.database if url is not None else config.db.database
    if backend == "sqlite" and database not in (None, "", ":memory:"):
        return Path(str(database)).resolve().parent
    return Path(SERVICE_DATA_DIR)


def with_instance_secret(config: RegistryConfig, data_dir: Path) -> RegistryConfig:
    """The config with http.instance_secret filled from the data directory when the file gives none."""
    if config.http.instance_secret is not None:
        return config
    http = config.http.model_copy(update={"instance_secret": instance_secret(data_dir)})
    return config.model_copy(update={"http": http})


def zero_config_for_reading(data_dir: Path) -> RegistryConfig:
    """The zero-config registry's config, for commands that only read its database."""
    database = (data_dir / DATABASE_FILE).resolve()
    if not database.exists():
        raise DataDirError(f"no registry database in {data_dir}; pass --data-dir of a `boshreg serve`, or --config")
    return RegistryConfig(http=HttpConfig(password="unused"), db=DbConfig(adapter="sqlite", database=str(database)))


def zero_config(data_dir: Path, *, host: str | None = None, port: int | None = None) -> RegistryConfig:
    """The config ``serve`` uses without a file: SQLite and the generated password in ``data_dir``."""
    http = HttpConfig(password=admin_password(data_dir))
    if host is not None:
        http = http.model_copy(update={"host": host})
    if port is not None:
        http = http.model_copy(update={"port": port})
    db = DbConfig(adapter="sqlite", database=str((data_dir / DATABASE_FILE).resolve()))
    return RegistryConfig(http=http, db=db)


def local_endpoint(data_dir: Path) -> Endpoint | None:
    """The admin endpoint of a zero-config registry on this host, if ``data_dir`` belongs to one: on the port
    it last served on (recorded in the data directory), else the default."""
    password = read_admin_password(data_dir)
    if password is None:
        return None
    port = recorded_port(data_dir) or DEFAULT_PORT
    return Endpoint(scheme="http", host="127.0.0.1", port=port, user="admin", password=password)


def record_port(data_dir: Path, port: int) -> None:
    """Note the port a zero-config registry serves on, for the client commands of this host."""
    partial = data_dir / (PORT_FILE + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private, as every file here
    with os.fdopen(fd, "w") as out:
        out.write(f"{port}\n")
    partial.replace(data_dir / PORT_FILE)


def recorded_port(data_dir: Path) -> int | None:
    try:
        text = (data_dir / PORT_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None
