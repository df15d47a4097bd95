"""One verdict for one situation, whichever tool is asked: agent resolve, userdata render, inspect, testcloud boot.

Each situation is set up for real (a running registry, the metadata emulator, a config drive image) and
run through every tool that can express it; every tool must say the same word.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from boshreg.agent.agent_json import load_agent_config
from boshreg.agent.sources import ConfigDriveSource, FileSource, HttpSource, UnsupportedSource
from boshreg.bootstrap import nova
from boshreg.testcloud.configdrive import drive_files, write_iso
from boshreg.testcloud.metadata import MetadataServer
from boshreg.testcloud.vms import TestVm as CloudVm
from boshreg.testcloud.vms import default_meta_data
from conftest import RegistryLauncher
from support.chain import PUBLIC_KEY, registry_user_data, settings_for, store
from support.cli import boshreg
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    launcher = RegistryLauncher(tmp_path_factory.mktemp("verdict-registry"))
    yield launcher()
    launcher.close()


@dataclass
class Situation:
    """A VM: what its drive carries (None: no drive), and what the metadata service serves (None: down)."""

    name: str
    drive_key: str | None  # the public key on the drive's meta-data.json
    drive: bool
    metadata: bool
    metadata_key: str | None
    endpoint: str | None = None  # default: the test registry's


@contextmanager
def vm_of(situation: Situation, registry: RegistryProcess, tmp_path: Path) -> Iterator[list[str]]:
    """The agent's command-line options for this VM: its drive image and its metadata service URL."""
    endpoint = situation.endpoint or f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}"
    name = f"vm-{situation.name}"
    store(registry, name, settings_for(name))
    user_data = registry_user_data(name, endpoint)
    drive = tmp_path / f"{name}.iso"
    if situation.drive:
        write_iso(drive_files(CloudVm(name, user_data, default_meta_data(name, situation.drive_key))), drive)
    served = CloudVm(name, user_data, default_meta_data(name, situation.metadata_key))
    server = MetadataServer("127.0.0.1", 0, [served]).start() if situation.metadata else None
    url = server.url if server is not None else f"http://127.0.0.1:{free_port()}"
    try:
        yield ["--config-drive", str(drive), "--metadata-url", url]
    finally:
        if server is not None:
            server.stop()


def agent_word(situation: Situation, registry: RegistryProcess, tmp_path: Path) -> str:
    """`boshreg agent resolve`, the current OpenStack stemcell's order, against this VM."""
    with vm_of(situation, registry, tmp_path) as options:
        result = boshreg("agent", "resolve", *options, "--deadline", "20", "--json", cwd=tmp_path)
    trace = json.loads(result.stdout)
    assert (result.returncode == 0) == (trace["verdict"] != "broken"), result.stderr
    return str(trace["verdict"])


def render_word(delivery: str, endpoint: str) -> Callable[[Path], str]:
    def word(tmp_path: Path) -> str:
        result = boshreg(
            "userdata", "render", "--name", "vm-1", "--endpoint", endpoint, "--delivery", delivery, "--json",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        return str(json.loads(result.stdout)["verdict"])

    return word


def inspect_word(delivery: str, endpoint: str) -> Callable[[Path], str]:
    """Inspect the very request `userdata render` gives nova."""

    def word(tmp_path: Path) -> str:
        rendered = boshreg(
            "userdata", "render", "--name", "vm-1", "--endpoint", endpoint, "--delivery", delivery, "--json",
            cwd=tmp_path,
        )  # fmt: skip
        (tmp_path / "request.json").write_text(json.dumps({"server": json.loads(rendered.stdout)["nova"]}))
        result = boshreg("inspect", "request.json", "--json", cwd=tmp_path)
        verdict = str(json.loads(result.stdout)["verdict"])
        assert result.returncode == (0 if verdict == "portable" else 1)
        return verdict

    return word


def boot_word(*options: str) -> Callable[[Path], str]:
    def word(tmp_path: Path) -> str:
        result = boshreg("testcloud", "boot", "--json", *options, cwd=tmp_path)
        return str(json.loads(result.stdout)["trace"]["verdict"])

    return word


ROUTABLE = "http://admin:pw@10.0.0.5:25777"
LOOPBACK = "http://admin:admin@localhost:25695"

# situation, the expected word, the situation for the agent, and the other tools that can express it
TABLE: list[tuple[str, str, Situation | None, list[Callable[[Path], str]]]] = [
    (
        "metadata only",
        "portable",
        Situation("meta", None, drive=False, metadata=True, metadata_key=PUBLIC_KEY),
        [render_word("metadata", ROUTABLE), inspect_word("metadata", ROUTABLE), boot_word()],
    ),
    (
        "a config drive and the same user data on the metadata service",
        "portable",
        Situation("same", PUBLIC_KEY, drive=True, metadata=True, metadata_key=PUBLIC_KEY),
        [
            render_word("config-drive", ROUTABLE),
            inspect_word("config-drive", ROUTABLE),
            render_word("legacy", ROUTABLE),
            inspect_word("legacy", ROUTABLE),
            boot_word("--delivery", "config-drive"),
        ],
    ),
    (
        "the drive carries a public key the metadata service lacks",
        "pinned",
        Situation("key", PUBLIC_KEY, drive=True, metadata=True, metadata_key=None),
        [],  # render and boot cannot make copies differ; inspect's row is the legacy request below
    ),
    (
        "the metadata service is down and the drive is there",
        "pinned",
        Situation("down", PUBLIC_KEY, drive=True, metadata=False, metadata_key=None),
        [boot_word("--delivery", "config-drive", "--metadata-down")],
    ),
    (
        "neither a drive nor a metadata service",
        "broken",
        Situation("none", None, drive=False, metadata=False, metadata_key=None),
        [boot_word("--metadata-down")],
    ),
    (
        "the old default endpoint (loopback, port 25695, admin:admin)",
        "broken",
        Situation("loop", None, drive=False, metadata=True, metadata_key=None, endpoint=LOOPBACK),
        [render_word("metadata", LOOPBACK), inspect_word("config-drive", LOOPBACK)],
    ),
]


@pytest.mark.parametrize(("situation", "expected", "vm", "tools"), TABLE, ids=[row[0] for row in TABLE])
def test_every_tool_says_one_word(
    situation: str,
    expected: str,
    vm: Situation | None,
    tools: list[Callable[[Path], str]],
    registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    words = [tool(tmp_path) for tool in tools]
    if vm is not None:
        words.append(agent_word(vm, registry, tmp_path))
    assert words == [expected] * len(words), situation


def test_inspect_of_the_legacy_request_with_the_key_only_in_the_personality_copy_is_pinned(tmp_path: Path) -> None:
    result = boshreg("inspect", str(FIXTURES / "legacy_create_server.json"), "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert (result.returncode, report["verdict"]) == (1, "pinned")
    assert f"openssh.public_key (only in the injected {nova.PERSONALITY_PATH}) would be lost" in report["reasons"]


def test_agent_resolve_names_what_only_the_drive_carries(registry: RegistryProcess, tmp_path: Path) -> None:
    situation = Situation("named", PUBLIC_KEY, drive=True, metadata=True, metadata_key=None)
    with vm_of(situation, registry, tmp_path) as options:
        result = boshreg("agent", "resolve", *options, "--deadline", "20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("verdict: "))
    assert lines[at] == f"verdict: pinned (fed by config drive {tmp_path}/vm-named.iso/ec2/latest/user-data)"
    assert lines[at + 1] == f"  without the drive: the public key ({PUBLIC_KEY}) is only on the drive"
    assert json.loads(result.stdout) == settings_for("vm-named")


# --- agent.json -------------------------------------------------------------------------------------

STEMCELL_AGENT_JSON = {
    "Platform": {"Linux": {"CreatePartitionIfNoEphemeralDisk": True, "DevicePathResolutionType": "virtio"}},
    "Infrastructure": {"Settings": nova.OPENSTACK_STEMCELL_SETTINGS},
}


def agent_json(tmp_path: Path, sources: list[dict[str, object]], use_server_name: bool = True) -> Path:
    path = tmp_path / "agent.json"
    settings = {"Sources": sources, "UseServerName": use_server_name, "UseRegistry": True}
    path.write_text(json.dumps({"Infrastructure": {"Settings": settings}}))
    return path


def test_the_stemcells_agent_json_is_read_in_its_order(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(json.dumps(STEMCELL_AGENT_JSON))
    agent = load_agent_config(str(tmp_path / "agent.json"))
    file_source, drive, http = agent.sources
    assert isinstance(file_source, FileSource)
    assert file_source.settings_path == "/var/vcap/bosh/agent-bootstrap-env.json"
    assert isinstance(drive, ConfigDriveSource)
    assert drive.disk_paths == ["/dev/disk/by-label/CONFIG-2", "/dev/disk/by-label/config-2"]
    assert (drive.meta_data_path, drive.user_data_path) == ("ec2/latest/meta-data.json", "ec2/latest/user-data")
    assert isinstance(http, HttpSource)
    assert (http.uri, http.user_data_path, http.ssh_keys_path) == (
        "http://169.254.169.254",  # only read here: the tests point every HTTP source at an emulator
        "/latest/user-data",
        "/latest/meta-data/public-keys/0/openssh-key",
    )
    assert (agent.use_server_name, agent.use_registry, http.want_instance_id) == (True, True, False)


def test_agent_resolve_with_the_stemcells_agent_json(registry: RegistryProcess, tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(json.dumps(STEMCELL_AGENT_JSON))
    situation = Situation("stemcell", PUBLIC_KEY, drive=True, metadata=True, metadata_key=PUBLIC_KEY)
    with vm_of(situation, registry, tmp_path) as options:
        result = boshreg("agent", "resolve", "--agent-config", "agent.json", *options, "--json", cwd=tmp_path)
    trace = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert [(s["step"], s["outcome"]) for s in trace["steps"]] == [
        ("source", "absent"),  # File: /var/vcap/bosh/agent-bootstrap-env.json is not on this machine
        ("source", "ok"),  # ConfigDrive: the image given with --config-drive
        ("without-drive", "absent"),
        ("without-drive", "ok"),  # HTTP: the emulator given with --metadata-url
        ("registry", "ok"),
    ]
    assert (trace["verdict"], trace["source_kind"]) == ("portable", "config-drive")


def test_an_older_stemcell_walks_the_drive_then_the_metadata_service(registry: RegistryProcess, tmp_path: Path) -> None:
    situation = Situation("older", PUBLIC_KEY, drive=True, metadata=True, metadata_key=PUBLIC_KEY)
    with vm_of(situation, registry, tmp_path) as options:
        drive, url = options[1], options[3]
        path = agent_json(
            tmp_path,
            [
                {"Type": "ConfigDrive", "DiskPaths": [drive], "MetaDataPath": "ec2/latest/meta-data.json",
                 "UserDataPath": "ec2/latest/user-data"},
                {"Type": "HTTP", "URI": url},  # the URI is honoured as given
            ],
        )  # fmt: skip
        result = boshreg("agent", "resolve", "--agent-config", str(path), "--json", cwd=tmp_path)
    trace = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert trace["verdict_detail"]["fed_by"] == f"config drive {drive}/ec2/latest/user-data"
    assert trace["verdict"] == "portable"


def test_a_source_type_boshreg_does_not_walk_is_reported(registry: RegistryProcess, tmp_path: Path) -> None:
    situation = Situation("cdrom", None, drive=False, metadata=True, metadata_key=None)
    with vm_of(situation, registry, tmp_path) as options:
        path = agent_json(tmp_path, [{"Type": "CDROM", "FileName": "env"}, {"Type": "HTTP", "URI": options[3]}])
        result = boshreg("agent", "resolve", "--agent-config", str(path), "--json", cwd=tmp_path)
    trace = json.loads(result.stdout)
    first = trace["steps"][0]
    assert (first["name"], first["outcome"]) == ("CDROM source", "unsupported")
    assert "source type 'CDROM' is not implemented by boshreg" in first["detail"]
    assert "bosh-agent refuses to start: CDROM source is not supported when registry is used" in first["detail"]
    assert trace["verdict"] == "portable"


def test_an_unknown_type_is_kept_in_the_walk_with_what_bosh_agent_does(tmp_path: Path) -> None:
    path = agent_json(tmp_path, [{"Type": "Floppy"}, {"Type": "HTTP", "URI": "http://127.0.0.1:1"}])
    unknown, http = load_agent_config(str(path)).sources
    assert isinstance(unknown, UnsupportedSource)
    assert unknown.consequence == "bosh-agent itself refuses to start: Unknown source type"
    assert isinstance(http, HttpSource)


def test_use_server_name_false_keys_the_registry_by_instance_id(registry: RegistryProcess, tmp_path: Path) -> None:
    vm = CloudVm("vm-aws-like", None, default_meta_data("vm-aws-like"))
    vm.user_data = registry_user_data(vm.name, f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}")
    store(registry, vm.instance_id, settings_for(vm.name))
    server = MetadataServer("127.0.0.1", 0, [vm]).start()
    try:
        http: dict[str, object] = {"Type": "HTTP", "URI": server.url, "UserDataPath": "/latest/user-data",
                "InstanceIDPath": "/latest/meta-data/instance-id"}  # fmt: skip
        path = agent_json(tmp_path, [http], use_server_name=False)
        result = boshreg("agent", "resolve", "--agent-config", str(path), "--json", cwd=tmp_path)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["registry_url"].endswith(f"/instances/{vm.instance_id}/settings")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not JSON"),
        ("{}", "has no Infrastructure.Settings object"),
        ('{"Infrastructure": {"Settings": {"Sources": []}}}', "Sources is missing or empty"),
        ('{"Infrastructure": {"Settings": {"Sources": [{"URI": "x"}]}}}', "Sources[0] has no Type"),
    ],
)
def test_an_unusable_agent_json_is_a_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "agent.json").write_text(content)
    result = boshreg("agent", "resolve", "--agent-config", "agent.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("boshreg: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_personality_path_is_the_one_fact(tmp_path: Path) -> None:
    rendered = boshreg("userdata", "render", "--name", "vm-1", "--endpoint", ROUTABLE, "--delivery", "legacy",
                       "--json", cwd=tmp_path)  # fmt: skip
    personality = json.loads(rendered.stdout)["nova"]["personality"][0]
    assert personality["path"] == nova.PERSONALITY_PATH
    assert json.loads(base64.b64decode(personality["contents"]))["server"] == {"name": "vm-1"}
