"""`boshreg userdata from-registry`: stored settings become registry-less user data (the way off the registry
for VMs moving to an api_version 2 stemcell), from the database or a running registry, within size limits."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx

from conftest import RegistryLauncher
from support.cli import assert_one_line_error, boshreg
from support.registry import ADMIN_PASSWORD, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS: dict[str, object] = {
    "agent_id": "a-1",
    "mbus": "nats://nats:s3cret@10.0.0.6:4222",
    "networks": {"default": {"ip": "10.0.0.12", "dns": ["10.0.0.2"]}},
    "vm": {"name": "vm-3f1c"},
}


def stored(registry: RegistryProcess, instance_id: str, settings: dict[str, object]) -> None:
    url = f"{registry.url}/instances/{instance_id}/settings"
    assert httpx.put(url, content=json.dumps(settings), auth=ADMIN).status_code == 200


def config_of(registry: RegistryProcess) -> str:
    return registry.args[registry.args.index("--config") + 1]


def test_from_the_database_and_from_a_running_registry_alike(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    stored(registry, "vm-3f1c", SETTINGS)
    from_database = boshreg("userdata", "from-registry", "vm-3f1c", "--config", config_of(registry), cwd=tmp_path)
    assert from_database.returncode == 0, from_database.stderr
    user_data = json.loads(from_database.stdout)
    assert user_data == {**SETTINGS, "server": {"name": "vm-3f1c"}, "dns": {"nameserver": ["10.0.0.2"]}}
    assert "registry" not in user_data  # registry-less: the agent takes the settings as they are
    endpoint = registry.url.replace("://", f"://admin:{ADMIN_PASSWORD}@")
    asked = boshreg("userdata", "from-registry", "vm-3f1c", "--endpoint", endpoint, "--json", cwd=tmp_path)
    document = json.loads(asked.stdout)
    assert (document["user_data"], document["bytes"]) == (user_data, len(from_database.stdout.strip().encode()))


def test_written_to_a_private_file(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    stored(registry, "vm-1", SETTINGS)
    result = boshreg(
        "userdata", "from-registry", "vm-1", "--config", config_of(registry), "-o", "ud.json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "ud.json").stat().st_mode) == 0o600  # the settings hold credentials
    assert json.loads((tmp_path / "ud.json").read_text())["agent_id"] == "a-1"


def test_what_cannot_become_user_data_is_one_line(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    stored(registry, "vm-big", {**SETTINGS, "env": {"blob": "x" * 20_000}})
    stored(registry, "vm-noid", {"networks": {}})
    config = config_of(registry)
    too_big = boshreg("userdata", "from-registry", "vm-big", "--config", config, "--cloud", "aws", cwd=tmp_path)
    assert_one_line_error(too_big, "16,384 bytes", "use registry mode")
    assert_one_line_error(boshreg("userdata", "from-registry", "vm-noid", "--config", config, cwd=tmp_path), "agent_id")
    missing = boshreg("userdata", "from-registry", "vm-none", "--config", config, "--json", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no settings stored for vm-none" in json.loads(missing.stdout)["error"]
