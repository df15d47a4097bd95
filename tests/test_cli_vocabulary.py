"""One name per idea across every command, the agent's stdlib parser included.

The test walks what each command's ``--help`` shows (click's options, argparse's actions) and fails when
two names for the same idea are in use anywhere: a user who learned ``--output`` on one command must not
meet ``--out`` on another.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from boshreg.agent.cli import build_parser
from boshreg.cli import cli
from support.cli import boshreg

SYNONYMS = {
    "output file": ("--output", "--out", "--output-file"),
    "user-data file": ("--user-data", "--user-data-file"),
    "how long to wait": ("--deadline", "--timeout", "--wait"),
    "address to serve on": ("--host", "--listen", "--address"),
    "config file": ("--config", "--config-file", "--conf"),
    "registry URL": ("--endpoint", "--registry", "--registry-url", "--url"),
    "machine-readable output": ("--json", "--format", "--output-format"),
    "CA certificate": ("--cacert", "--ca-cert", "--ca"),
}


def click_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from click_commands(command, (*path, name))


def shown_options() -> dict[str, set[str]]:
    """Every option name a --help shows, and the commands that show it."""
    shown: dict[str, set[str]] = {}
    for path, command in click_commands(cli):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for name in (*param.opts, *param.secondary_opts):
                    shown.setdefault(name, set()).add(" ".join(path))
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                for sub_action in subparser._actions:
                    if sub_action.help != argparse.SUPPRESS:
                        for option in sub_action.option_strings:
                            shown.setdefault(option, set()).add(f"agent {name}")
    return shown


@pytest.mark.parametrize("idea", sorted(SYNONYMS))
def test_one_name_per_idea(idea: str) -> None:
    shown = shown_options()
    used = {name: sorted(shown[name]) for name in SYNONYMS[idea] if name in shown}
    assert len(used) <= 1, f"{idea} has more than one name: {used}"


def test_every_command_has_a_working_help() -> None:
    runner = CliRunner()
    for path, _command in click_commands(cli):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_the_agents_help_uses_the_same_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["resolve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for name in ("--output", "--user-data", "--deadline", "--json", "--cacert"):
        assert name in text
    for old in ("--out ", "--user-data-file", "--timeout"):
        assert old not in text


def json_commands() -> list[tuple[str, ...]]:
    return [
        path
        for path, command in click_commands(cli)
        if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)
    ]


@pytest.mark.parametrize("path", json_commands(), ids=" ".join)
def test_under_json_every_usage_error_is_json_with_a_fix(path: tuple[str, ...], tmp_path: Path) -> None:
    result = boshreg(*path, "--json", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2, result
    document = json.loads(result.stdout)
    assert set(document) == {"error", "fix"}
    assert "--no-such-option" in document["error"]
    assert result.stderr == ""


def test_the_agents_usage_errors_under_json_are_json(tmp_path: Path) -> None:
    result = boshreg("agent", "resolve", "--json", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2
    assert set(json.loads(result.stdout)) == {"error", "fix"}
