"""The boshreg command as a user runs it: zero-config serve, the settings client, one-line errors."""

from __future__ import annotations

import re
import socket
import stat
from pathlib import Path

import pytest

from conftest import RegistryLauncher
from support.cli import assert_one_line_error, boshreg
from support.registry import ADMIN_PASSWORD, RegistryProcess

# --- zero-config serve ---------------------------------------------------------------------------


def endpoint_in_banner(registry: RegistryProcess) -> str:
    match = re.search(r"^  endpoint: (http://admin:(\S+)@(\S+):(\d+))$", registry.stdout(), re.M)
    assert match, registry.stdout()
    return match.group(1)


def test_serve_without_config_prints_a_registry_block_with_a_generated_password(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(args=[])
    banner = registry.stdout()
    password = (tmp_path / ".boshreg" / "admin-password").read_text().strip()
    assert len(password) >= 20
    assert password.isalnum()  # safe unquoted in URLs, YAML and shell arguments
    assert f"endpoint: http://admin:{password}@" in banner
    assert f"  user: admin\n  password: {password}\n" in banner
    host = endpoint_in_banner(registry).rsplit("@", 1)[1].split(":")[0]
    assert not host.startswith("127.") or "VMs cannot reach" in banner
    assert f"database: sqlite:///{tmp_path}/.boshreg/registry.db" in banner
    assert stat.S_IMODE((tmp_path / ".boshreg" / "admin-password").stat().st_mode) == 0o600
    assert password not in registry.stderr()


def test_zero_config_password_survives_a_restart(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    first = start_registry(args=[])
    first.stop()
    second = start_registry(args=[])
    assert endpoint_in_banner(first).split("@")[0] == endpoint_in_banner(second).split("@")[0]


def test_settings_commands_against_a_local_zero_config_registry(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(args=[])
    password = (tmp_path / ".boshreg" / "admin-password").read_text().strip()
    endpoint = f"http://admin:{password}@127.0.0.1:{registry.port}"
    env = {"BOSHREG_ENDPOINT": endpoint}
    (tmp_path / "settings.json").write_text('{"agent_id": "a-1"}')
    put = boshreg("settings", "put", "vm-1", "settings.json", cwd=tmp_path, env=env)
    assert (put.returncode, put.stdout) == (0, "stored settings of vm-1 (19 bytes)\n")
    got = boshreg("settings", "get", "vm-1", cwd=tmp_path, env=env)
    assert (got.returncode, got.stdout) == (0, '{"agent_id": "a-1"}\n')
    piped = boshreg("settings", "put", "vm-2", "-", cwd=tmp_path, stdin=b'{"agent_id": "a-2"}', env=env)
    assert piped.returncode == 0
    assert boshreg("settings", "get", "vm-2", "--endpoint", endpoint, cwd=tmp_path).stdout == '{"agent_id": "a-2"}\n'
    assert boshreg("settings", "delete", "vm-2", cwd=tmp_path, env=env).returncode == 0
    assert_one_line_error(boshreg("settings", "get", "vm-2", cwd=tmp_path, env=env), "404", "vm-2")


def test_settings_get_finds_the_local_registry_on_the_port_it_serves_on(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry(args=[])  # zero-config mode in ./.boshreg, on a port of the launcher's choosing
    assert (tmp_path / ".boshreg" / "port").read_text() == f"{registry.port}\n"
    (tmp_path / "s.json").write_text("{}")
    assert boshreg("settings", "put", "vm-local", "s.json", cwd=tmp_path).returncode == 0
    assert boshreg("settings", "get", "vm-local", cwd=tmp_path).stdout == "{}\n"


# --- one-line errors -----------------------------------------------------------------------------


def test_bad_config_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text("http: {port: 99999, password: x}\n")
    assert_one_line_error(boshreg("serve", "--config", "r.yml", cwd=tmp_path), "http.port")


def test_unwritable_logfile_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(
        f"logfile: /nonexistent/dir/registry.log\nhttp: {{password: x}}\ndata_dir: {tmp_path}/data\n"
    )
    assert_one_line_error(boshreg("serve", "--config", "r.yml", cwd=tmp_path), "/nonexistent/dir/registry.log")


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(boshreg("serve", "--config", "absent.yml", cwd=tmp_path), "absent.yml")


def test_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = boshreg("serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert_one_line_error(result, f"127.0.0.1:{port}", "http.port")


def test_unknown_config_keys_are_warned_about(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    config = tmp_path / "r.yml"
    config.write_text(
        f"http: {{host: 127.0.0.1, password: {ADMIN_PASSWORD}, prot: 1}}\ndb: sqlite:///{tmp_path}/r.db\n"
    )
    registry = start_registry(args=["--config", str(config)])
    assert "unknown config key http.prot is ignored" in registry.stderr()


def test_client_error_names_the_redacted_endpoint_and_never_the_password(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = boshreg("settings", "get", "vm-1", "--endpoint", f"http://admin:topsecret@127.0.0.1:{port}", cwd=tmp_path)
    assert_one_line_error(result, f"http://admin:***@127.0.0.1:{port}/instances/vm-1/settings", "connection refused")
    assert "topsecret" not in result.stderr


def test_wrong_credentials_are_named(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    result = boshreg(
        "settings", "get", "vm-1", "--endpoint", f"http://admin:wrong@127.0.0.1:{registry.port}", cwd=tmp_path
    )
    assert_one_line_error(result, "401", "check the user and password")


def test_invalid_settings_file_is_refused_with_the_servers_reason(
    start_registry: RegistryLauncher, tmp_path: Path
) -> None:
    registry = start_registry()
    (tmp_path / "bad.json").write_text("[1, 2]")
    result = boshreg(
        "settings",
        "put",
        "vm-1",
        "bad.json",
        "--endpoint",
        f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "400", "must be a JSON object")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["settings", "get"], "Missing argument 'INSTANCE_ID'"),
        (["settings", "put", "vm-1", "missing.json"], "missing.json"),
        (["settings", "get", "vm-1", "--endpoint", "ftp://h"], "--endpoint has scheme 'ftp'"),
        (["settings", "get", "vm-1", "--endpoint", "http://h:25777/registry"], "path"),
        (["settings", "get", "vm-1"], "no registry endpoint"),
        (["serve", "--port", "70000"], "70000"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    assert_one_line_error(boshreg(*args, cwd=tmp_path), expected)


def test_help_shows_examples(tmp_path: Path) -> None:
    result = boshreg("settings", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "boshreg settings put vm-3f1c settings.json" in result.stdout
