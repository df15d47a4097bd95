"""`boshreg service-unit`: a hardened systemd unit that systemd's own verifier accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import required_tool
from support.cli import assert_one_line_error, boshreg

BOSHREG = Path(sys.executable).with_name("boshreg")  # the venv's entry point, as an installed service runs it


@pytest.fixture(scope="module")
def analyze() -> str:
    return required_tool("systemd-analyze", "apt-get install systemd, or make tools as root")


def unit(tmp_path: Path, *args: str) -> dict[str, list[str]]:
    """The unit written by the command, verified by systemd-analyze, as key -> values."""
    result = boshreg("service-unit", "--executable", str(BOSHREG), "-o", "boshreg.service", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "boshreg.service").read_text()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def verify(analyze: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "boshreg.service")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zero_config_service_is_hardened_and_verifies(analyze: str, tmp_path: Path) -> None:
    keys = unit(tmp_path)
    verify(analyze, tmp_path)
    assert keys["ExecStart"] == [f"{BOSHREG.resolve()} serve --data-dir /var/lib/boshreg"]
    for key, value in [("DynamicUser", "yes"), ("StateDirectory", "boshreg"), ("StateDirectoryMode", "0700"),
                       ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("UMask", "0077"),
                       ("LimitNOFILE", "65536"), ("CapabilityBoundingSet", "")]:  # fmt: skip
        assert keys[key] == [value], key


def test_a_config_a_named_user_and_a_low_port(analyze: str, tmp_path: Path) -> None:
    (tmp_path / "registry.yml").write_text("http: {password: pw}\ndb: {url: 'sqlite:////var/lib/boshreg/r.db'}\n")
    keys = unit(tmp_path, "--config", "registry.yml", "--user", "root", "--port", "443")
    verify(analyze, tmp_path)
    config = tmp_path / "registry.yml"
    assert keys["ExecStart"] == [f"{BOSHREG.resolve()} serve --config {config} --data-dir /var/lib/boshreg --port 443"]
    assert (keys["User"], keys.get("DynamicUser")) == (["root"], None)
    assert keys["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]  # and nothing else


def test_without_boshreg_on_the_path_it_says_what_to_give(tmp_path: Path) -> None:
    if shutil.which("boshreg", path="/usr/bin:/bin") is not None:
        pytest.fail("a boshreg in /usr/bin would make this test meaningless")
    result = boshreg("service-unit", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert_one_line_error(result, "--executable")
