"""The registry's YAML config: the original BOSH registry's keys, validated, plus our own.

An operator moving from the original registry keeps their file. Every problem is reported as one line
naming the key, and keys we do not know produce a warning instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url

from boshreg.errors import BoshregError

DEFAULT_PORT = 25777
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "fatal")

# The original's Sequel adapter names, and the SQLAlchemy driver each one maps to.
ADAPTER_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql2": "mysql+pymysql",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}
# Drivers named in a URL without one ("postgresql://") get ours, so no extra package is needed.
_DEFAULT_URL_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


@dataclass(frozen=True)
class AdminSecret:
    """An admin's password, in clear or as a bcrypt hash."""

    password: str | None = None
    password_hash: str | None = None


class ConfigError(BoshregError):
    """A config that cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    # Unknown keys are kept (not rejected) so that they can be reported as warnings.
    model_config = ConfigDict(extra="allow", frozen=True)


_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


def _one_secret(password: str | None, password_hash: str | None, where: str) -> None:
    if (password is None) == (password_hash is None):
        raise ValueError(
            f"give {where}password or {where}password_hash (a bcrypt hash from `boshreg hash-password`), exactly one"
        )
    if password_hash is not None and not _BCRYPT.fullmatch(password_hash):
        raise ValueError(f"{where}password_hash is not a bcrypt hash ($2b$...); make one with `boshreg hash-password`")


class HttpUser(_Section):
    username: Annotated[str, Field(min_length=1)]
    password: Annotated[str | None, Field(min_length=1)] = None
    password_hash: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> HttpUser:
        _one_secret(self.password, self.password_hash, "")
        return self


class TlsConfig(_Section):
    cert: str
    key: str


class ThrottleConfig(_Section):
    max_failures: Annotated[int, Field(ge=1, le=100_000)] = 10  # failed authentications per address ...
    window: Annotated[float, Field(gt=0, le=86_400)] = 60.0  # ... within this many seconds ...
    block: Annotated[float, Field(gt=0, le=86_400)] = 60.0  # ... block that address this long (429)


class HttpConfig(_Section):
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT
    host: str = "0.0.0.0"  # noqa: S104 - the registry must be reachable from VMs
    user: Annotated[str, Field(min_length=1)] = "admin"
    password: Annotated[str | None, Field(min_length=1)] = None
    password_hash: str | None = None
    additional_users: list[HttpUser] = []
    instance_secret: Annotated[str | None, Field(min_length=16)] = None
    auth_throttle: ThrottleConfig = ThrottleConfig()
    tls: TlsConfig | None = None
    allow_anonymous_reads: bool = False
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = DEFAULT_MAX_BODY_BYTES
    request_timeout: Annotated[float, Field(gt=0, le=300)] = 15.0
    # ours: what one connection may cost (the HTTP front enforces these before the app sees a request)
    header_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # the request head must arrive within it
    keepalive_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0  # an idle connection is closed after it
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024  # 431 past it
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100  # 431 past it
    max_connections: Annotated[int | None, Field(ge=16)] = None  # per process; default: the file limit minus 160
    max_connections_per_address: Annotated[int | None, Field(ge=1)] = None  # default: half of max_connections
    # ours: the answer cache of settings reads, per process (0: off); on MySQL, cache_seconds bounds what
    # writers other than boshreg leave cached (boshreg's own writes: cache.CHANGE_POLL_SECONDS; README)
    cache_bytes: Annotated[int, Field(ge=0, le=4 * 1024 * 1024 * 1024)] = 32 * 1024 * 1024
    cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    workers: Annotated[int | None, Field(ge=1, le=64)] = None  # processes; default: one per core
    # ours: who may scrape GET /metrics without admin credentials (addresses or networks)
    metrics_allow_from: list[str] = []

    @field_validator("additional_users", "metrics_allow_from", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("metrics_allow_from")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or network (10.0.0.5, 10.0.0.0/24, fd00::/64)") from None
        return value


class DbConfig(_Section):
    adapter: str = "sqlite"
    database: str | None = None
    host: str | None = None
    port: Annotated[int | None, Field(ge=1, le=65535)] = None
    user: str | None = None
    password: str | None = None
    url: str | None = None
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 32
    pool_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    query_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    connection_options: dict[str, Any] = {}

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        if value.lower() not in ADAPTER_DRIVERS:
            known = ", ".join(sorted({"sqlite", "postgres", "mysql2"}))
            raise ValueError(f"unknown adapter '{value}' (use one of {known}, or give db as a URL)")
        return value.lower()

    @field_validator("connection_options", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _database_given(self) -> DbConfig:
        if self.url is None and not self.database:
            raise ValueError("database is missing: set db.database (a file for sqlite, a name otherwise)")
        if self.url is not None:
            sqlalchemy_url(self)  # validate early
        return self


class OpenStackConfig(_Section):
    auth_url: str
    username: str
    api_key: str
    tenant: str | None = None
    project: str | None = None
    domain: str | None = None
    user_domain_name: str | None = None
    project_domain_name: str | None = None
    region: str | None = None
    endpoint_type: str = "publicURL"
    connection_options: dict[str, Any] = {}


class AwsConfig(_Section):
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str
    ec2_endpoint: str | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] = 2


class CloudConfig(_Section):
    plugin: Literal["openstack", "aws"]
    openstack: OpenStackConfig | None = None
    aws: AwsConfig | None = None
    address_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _plugin_section_given(self) -> CloudConfig:
        if getattr(self, self.plugin) is None:
            raise ValueError(f"plugin is '{self.plugin}' but cloud.{self.plugin} is missing")
        return self


class AuditConfig(_Section):
    max_age_hours: Annotated[float, Field(gt=0, le=24 * 3650)] = 24 * 30
    max_rows: Annotated[int, Field(ge=100, le=100_000_000)] = 1_000_000


SERVICE_DATA_DIR = "/var/lib/boshreg"  # a config-mode registry's data, when nothing says where


class RegistryConfig(_Section):
    loglevel: str = "info"
    logfile: str | None = None
    data_dir: str | None = None  # ours: the instance secret (and, without a db section, registry.db)
    http: HttpConfig = HttpConfig()
    db: DbConfig = DbConfig(database="registry.db")
    cloud: CloudConfig | None = None
    audit: AuditConfig = AuditConfig()

    @field_validator("loglevel")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"unknown level '{value}' (use one of debug, info, warn, error, fatal)")
        return value.lower()

    @field_validator("db", mode="before")
    @classmethod
    def _url_form(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _password_given(self) -> RegistryConfig:
        if self.http.password is None and self.http.password_hash is None:
            raise ValueError(
                "http.password is missing: set http.password or http.password_hash (or start without a config "
                "file to have one generated)"
            )
        _one_secret(self.http.password, self.http.password_hash, "http.")
        if self.http.allow_anonymous_reads and self.cloud is not None:
            raise ValueError(
                "http.allow_anonymous_reads cannot be combined with cloud: with a cloud, "
                "unauthenticated reads are checked against the caller's IP instead"
            )
        return self

    @property
    def log_level_name(self) -> str:
        """The Python logging name for the original's Ruby Logger levels."""
        return {"warn": "WARNING", "fatal": "CRITICAL"}.get(self.loglevel, self.loglevel.upper())

    def users(self) -> dict[str, AdminSecret]:
        """Every admin credential: the main user and the additional ones."""
        users = {u.username: AdminSecret(u.password, u.password_hash) for u in self.http.additional_users}
        users[self.http.user] = AdminSecret(self.http.password, self.http.password_hash)
        return users


def sqlalchemy_url(db: DbConfig) -> URL:
    """The database as a SQLAlchemy URL, from the original's keys or a URL given directly."""
    if db.url is not None:
        try:
            url = make_url(db.url)
        except Exception:
            raise ValueError(
                "not a valid database URL (e.g. postgresql://user@host/registry "
                "or sqlite:////var/vcap/store/registry.db)"
            ) from None
        driver = _DEFAULT_URL_DRIVERS.get(url.drivername)
        return url.set(drivername=driver) if driver else url
    driver = ADAPTER_DRIVERS[db.adapter]
    if driver == "sqlite":
        return URL.create("sqlite", database=db.database)
    return URL.create(
        driver,
        username=db.user,
        password=db.password,
        host=db.host or "127.0.0.1",
        port=db.port,
        database=db.database,
    )


def unknown_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of every key the models do not know, for a warning."""
    found = [f"{prefix}{key}" for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        if name == "connection_options":
            continue  # passed through to the driver as they are
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for index, child in enumerate(children):
            if isinstance(child, BaseModel):
                where = f"{prefix}{name}[{index}]." if isinstance(value, list) else f"{prefix}{name}."
                found.extend(unknown_keys(child, where))
    return found


def parse_config(data: Any, source: str = "config") -> RegistryConfig:
    """Validate an already-loaded YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys (loglevel, http, db, cloud), got {type(data).__name__}"
        )
    if "db" not in data:  # never the current directory: a service manager may start us from /
        data_dir = data.get("data_dir") or SERVICE_DATA_DIR
        data = {**data, "db": {"adapter": "sqlite", "database": str(Path(str(data_dir)) / "registry.db")}}
    try:
        return RegistryConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def load_config(path: Path) -> RegistryConfig:
    """Read and validate a config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path))


def _describe(exc: ValidationError) -> str:
    """One line for all problems, each naming its dotted key; never echoes a value (it may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is missing"
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
