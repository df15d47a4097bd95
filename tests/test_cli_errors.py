"""The command line behaves alike everywhere: help for a bare command, one-line or JSON errors, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import assert_one_line_error, boshreg
from support.registry import free_port


@pytest.mark.parametrize("group", [[], ["settings"], ["testcloud"], ["userdata"], ["endpoint"]])
def test_a_bare_command_prints_its_help(tmp_path: Path, group: list[str]) -> None:
    result = boshreg(*group, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: boshreg {' '.join(group)}".rstrip() + " [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "absent.json", "--json"],
        ["userdata", "render", "--json"],
        ["doctor", "absent.yml", "--json"],
        ["events", "--config", "absent.yml", "--json"],
        ["why", "vm-1", "--data-dir", "nowhere", "--json"],
        ["endpoint", "check", "ftp://x", "--json"],
        ["testcloud", "boot", "--delivery", "floppy", "--json"],
        ["agent", "resolve", "--deadline", "x", "--json"],
        ["agent", "resolve", "--agent-config", "absent.json", "--json"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_under_json_every_error_is_json_on_stdout(tmp_path: Path, args: list[str]) -> None:
    result = boshreg(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    answer = json.loads(result.stdout)
    assert set(answer) >= {"error", "fix"}  # endpoint check adds "valid": false
    assert answer["error"]
    assert "Traceback" not in result.stderr


def test_a_password_that_breaks_the_url_is_never_echoed(tmp_path: Path) -> None:
    for url in ("http://admin:pa/ss@10.0.0.5:25777", "http://admin:p#ss@10.0.0.5:25777", "http://admin:p?s@h:1"):
        result = boshreg("endpoint", "check", url, cwd=tmp_path)
        assert result.returncode == 2
        for secret in ("pa/ss", "p#ss", "p?s"):
            assert secret not in result.stderr
        assert "http://admin:***@" in result.stderr


def test_events_with_the_database_down_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "pg.yml").write_text(
        f"http: {{password: x}}\ndb: {{adapter: postgres, host: 127.0.0.1, port: {port}, user: u, password: "
        "Db-Secret-pw, database: reg, connect_timeout: 2}\n"
    )
    result = boshreg("events", "--config", "pg.yml", cwd=tmp_path)
    assert_one_line_error(result, "database")
    assert "Db-Secret-pw" not in result.stderr
