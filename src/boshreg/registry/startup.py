"""How `boshreg serve` starts, in order, in one place: config sources and overrides, the data directory
and its secrets, logging, warnings, the bound socket, the store. The command line only passes options in
and prints the banner; anything that starts a registry the same way calls ``open_registry``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from boshreg.logs import setup_logging
from boshreg.registry.config import RegistryConfig, load_config, unknown_keys
from boshreg.registry.datadir import (
    PASSWORD_FILE,
    config_data_dir,
    record_port,
    with_instance_secret,
    zero_config,
)
from boshreg.registry.server import Listening, bind, open_store, worker_count
from boshreg.registry.store import SettingsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenRegistry:
    """A registry ready to serve: its config, bound socket and store, and where its data lives."""

    config: RegistryConfig
    listening: Listening
    store: SettingsStore
    data_dir: Path
    password_file: str | None  # zero-config mode: where the generated admin password is kept


def open_registry(
    config_file: Path | None, data_dir: Path, *, data_dir_given: bool, host: str | None, port: int | None
) -> OpenRegistry:
    """Everything before serving. Without a config file: zero-config mode in ``data_dir``. With one: its data
    lives in ``data_dir`` only when given (``data_dir_given``), else where ``config_data_dir`` says."""
    if config_file is not None:
        config = with_overrides(load_config(config_file), host, port)
        password_file = None
        data_dir = data_dir if data_dir_given else config_data_dir(config)
    else:
        config = zero_config(data_dir, host=host, port=port)
        password_file = str((data_dir / PASSWORD_FILE).resolve())
    config = with_instance_secret(config, data_dir)
    setup_logging(config.log_level_name, config.logfile)
    for key in unknown_keys(config):
        log.warning("unknown config key %s is ignored; check its spelling against the README", key)
    if config.http.password == "admin":
        log.warning(
            "http.password is the well-known default; every VM's settings are readable by anyone "
            "who knows it. Set a generated one."
        )
    listening = bind(config.http.host, config.http.port, workers=worker_count(config))
    if password_file is not None:
        record_port(data_dir, listening.port)  # so that `boshreg settings` etc. find this registry's port
    return OpenRegistry(config, listening, open_store(config), data_dir, password_file)


def with_overrides(config: RegistryConfig, host: str | None, port: int | None) -> RegistryConfig:
    """The config with --host and --port applied."""
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if not updates:
        return config
    return config.model_copy(update={"http": config.http.model_copy(update=updates)})
