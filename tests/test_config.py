"""The registry config: the original's files load unchanged; every mistake is one line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from boshreg.registry.config import (
    AdminSecret,
    AuditConfig,
    CloudConfig,
    ConfigError,
    DbConfig,
    HttpConfig,
    RegistryConfig,
    load_config,
    parse_config,
    sqlalchemy_url,
    unknown_keys,
)

ORIGINAL_CONFIG = """\
---
loglevel: debug
http:
  port: 25777
  user: admin
  password: s3cret
  additional_users:
    - {username: director, password: d1r}
db:
  adapter: postgres
  host: 10.0.0.3
  port: 5432
  user: bosh
  password: db-pw
  database: bosh_registry
  max_connections: 32
  pool_timeout: 10
  connection_options: {}
cloud:
  plugin: openstack
  openstack:
    auth_url: https://keystone.example.com:5000/v3
    username: bosh
    api_key: key
    tenant: bosh
    region: RegionOne
    endpoint_type: publicURL
    connection_options: {ssl_verify_peer: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yml"
    path.write_text(text)
    return path


def test_the_original_registry_config_loads_unchanged(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ORIGINAL_CONFIG))
    assert config.http.port == 25777
    assert config.users() == {"admin": AdminSecret("s3cret"), "director": AdminSecret("d1r")}
    assert config.log_level_name == "DEBUG"
    assert config.cloud is not None
    assert config.cloud.plugin == "openstack"
    url = sqlalchemy_url(config.db)
    assert (url.drivername, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        "10.0.0.3",
        5432,
        "bosh_registry",
    )
    assert unknown_keys(config) == []


@pytest.mark.parametrize(
    ("adapter", "driver"),
    [("sqlite", "sqlite"), ("postgres", "postgresql+psycopg"), ("mysql2", "mysql+pymysql")],
)
def test_original_adapter_names_are_accepted(adapter: str, driver: str) -> None:
    config = parse_config({"http": {"password": "p"}, "db": {"adapter": adapter, "database": "reg"}})
    assert sqlalchemy_url(config.db).drivername == driver


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u:p@db/reg", "postgresql+psycopg"),
        ("mysql://root@db/reg", "mysql+pymysql"),
        ("sqlite:////var/vcap/store/registry.db", "sqlite"),
        ("postgresql+psycopg://u@db/reg", "postgresql+psycopg"),
    ],
)
def test_db_may_be_one_url(url: str, driver: str) -> None:
    config = parse_config({"http": {"password": "p"}, "db": url})
    assert sqlalchemy_url(config.db).drivername == driver


def test_unknown_keys_are_named_for_a_warning() -> None:
    config = parse_config({"http": {"password": "p", "prot": 1}, "dbb": {}, "db": {"database": "x", "hots": "h"}})
    assert sorted(unknown_keys(config)) == ["db.hots", "dbb", "http.prot"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"http": {"password": "p", "port": 70000}},
            "http.port: Input should be less than or equal to 65535",
        ),
        ({"http": {"password": "p", "port": "abc"}}, "http.port: Input should be a valid integer"),
        ({"http": {"user": "admin"}}, "http.password is missing"),
        (
            {"http": {"password": "p"}, "db": {"adapter": "oracle", "database": "x"}},
            "db.adapter: unknown adapter",
        ),
        ({"http": {"password": "p"}, "db": {"adapter": "postgres"}}, "db: database is missing"),
        ({"http": {"password": "p"}, "db": "::not a url"}, "db: not a valid database URL"),
        ({"http": {"password": "p"}, "loglevel": "loud"}, "loglevel: unknown level 'loud'"),
        (
            {"http": {"password": "p"}, "cloud": {"plugin": "aws"}},
            "cloud: plugin is 'aws' but cloud.aws is missing",
        ),
        (
            {"http": {"password": "p"}, "cloud": {"plugin": "vsphere"}},
            "cloud.plugin: Input should be 'openstack'",
        ),
        (
            {"http": {"password": "p", "additional_users": [{"username": "x"}]}},
            "http.additional_users.0: give password or password_hash",
        ),
        (
            {
                "http": {"password": "p", "allow_anonymous_reads": True},
                "cloud": {"plugin": "aws", "aws": {"region": "eu-west-1"}},
            },
            "cannot be combined with cloud",
        ),
    ],
)
def test_invalid_values_are_one_line_naming_the_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "registry.yml")
    message = str(raised.value)
    assert message.startswith("registry.yml: ")
    assert expected in message
    assert "\n" not in message


def test_errors_never_echo_secret_values() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"http": {"password": "p", "port": "hunter2-secret"}})
    assert "hunter2" not in str(raised.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3"):
        load_config(write(tmp_path, "http:\n  port: 1\n   password: x\n"))


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope.yml"):
        load_config(tmp_path / "nope.yml")


@pytest.mark.parametrize(
    ("section", "model"),
    [("", RegistryConfig), ("http", HttpConfig), ("db", DbConfig), ("cloud", CloudConfig), ("audit", AuditConfig)],
)
def test_every_config_key_is_in_the_readmes_reference(section: str, model: type[BaseModel]) -> None:
    """A key nobody can find in the README is a key nobody sets: each one has its line in the reference."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    reference = readme.split("## Config file reference", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in model.model_fields if not re.search(rf"(^|[\s{{,]){name}:", reference, re.M)]
    assert missing == [], f"config keys of {section} not in the README's reference: {missing}"
