"""The agent-side resolver against real sockets and files: the operator's scenarios (a) to (f) and more."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boshreg.agent import (
    ConfigDriveSource,
    FileSource,
    HttpSource,
    ResolveError,
    SettingsSource,
    SourceUnavailable,
    resolve,
)
from boshreg.bootstrap import userdata
from boshreg.testcloud.configdrive import drive_files, write_directory, write_iso
from conftest import RegistryLauncher
from support.chain import (
    PUBLIC_KEY,
    metadata_service,
    registry_user_data,
    settings_for,
    store,
    vm,
)
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def registry(start_registry: RegistryLauncher) -> RegistryProcess:
    return start_registry()


def endpoint_of(registry: RegistryProcess, password: str = ADMIN_PASSWORD) -> str:
    return f"http://admin:{password}@127.0.0.1:{registry.port}"


# --- the operator's scenarios --------------------------------------------------------------------


def test_a_config_drive_only_resolves_and_is_pinned(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-a", settings_for("vm-a"))
    drive = write_iso(drive_files(vm("vm-a", registry_user_data("vm-a", endpoint_of(registry)))), tmp_path / "d.iso")
    missing_metadata = HttpSource(f"http://127.0.0.1:{free_port()}")
    resolution = resolve([ConfigDriveSource([str(drive)]), missing_metadata], deadline=10)
    assert resolution.settings == settings_for("vm-a")
    assert resolution.trace.verdict == "pinned"
    assert [(s.step, s.outcome) for s in resolution.trace.steps] == [
        ("source", "ok"),
        ("without-drive", "absent"),
        ("registry", "ok"),
    ]
    detail = resolution.trace.verdict_detail
    assert detail is not None
    assert detail["fed_by"] == f"config drive {drive}/ec2/latest/user-data"
    assert detail["reasons"][0].startswith(f"metadata service {missing_metadata.uri}: ")


def test_b_metadata_only_resolves_and_is_portable(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-b", settings_for("vm-b"))
    with metadata_service(vm("vm-b", registry_user_data("vm-b", endpoint_of(registry)))) as service:
        no_drive = ConfigDriveSource([str(tmp_path / "none.iso")])
        resolution = resolve([no_drive, HttpSource(service.url)], deadline=10)
    assert resolution.settings == settings_for("vm-b")
    assert resolution.trace.verdict == "portable"
    assert resolution.trace.source == f"{service.url}/latest/user-data"
    assert resolution.trace.registry_url == f"http://admin:***@127.0.0.1:{registry.port}/instances/vm-b/settings"


def test_c_the_old_default_endpoint_fails_before_the_deadline_naming_it() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 25695)) == 0:
            pytest.skip("something listens on 127.0.0.1:25695 on this machine")
    user_data = registry_user_data("vm-c", "http://admin:admin@localhost:25695")
    deadline = 4.0
    started = time.monotonic()
    with metadata_service(vm("vm-c", user_data)) as service, pytest.raises(ResolveError) as raised:
        resolve([HttpSource(service.url)], deadline=deadline)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert elapsed < deadline + 1
    assert "registry GET http://admin:***@localhost:25695/instances/vm-c/settings failed after" in message
    assert "connection refused" in message
    assert "loopback" in message
    assert "admin:admin@" not in message


def test_d_no_source_at_all_lists_what_was_tried(tmp_path: Path) -> None:
    sources: list[SettingsSource] = [
        FileSource(str(tmp_path / "agent-bootstrap-env.json")),
        ConfigDriveSource([str(tmp_path / "none.iso")]),
        HttpSource(f"http://127.0.0.1:{free_port()}"),
    ]
    started = time.monotonic()
    with pytest.raises(ResolveError) as raised:
        resolve(sources, deadline=30)
    assert time.monotonic() - started < 2  # absent sources are passed over at once
    message = str(raised.value)
    assert message.startswith(f"no user data from any source (tried file {tmp_path}/agent-bootstrap-env.json: absent")
    assert f"config drive {tmp_path}/none.iso: absent: {tmp_path}/none.iso does not exist" in message
    assert "Connection refused" in message
    assert raised.value.trace.verdict == "broken"


def test_the_agent_commits_to_the_metadata_service_and_never_falls_back(tmp_path: Path) -> None:
    (tmp_path / "user_data.json").write_text("{}")
    sources: list[SettingsSource] = [
        HttpSource(f"http://127.0.0.1:{free_port()}"),
        FileSource(str(tmp_path / "user_data.json"), user_data_path=str(tmp_path / "user_data.json")),
    ]
    with pytest.raises(ResolveError) as raised:
        resolve(sources, deadline=5)
    assert [s.outcome for s in raised.value.trace.steps] == ["absent", "not-tried"]


def test_e_wrong_credentials_are_named_and_not_retried(registry: RegistryProcess) -> None:
    store(registry, "vm-e", settings_for("vm-e"))
    machine = vm("vm-e", registry_user_data("vm-e", endpoint_of(registry, "wrong")))
    with metadata_service(machine) as service, pytest.raises(ResolveError) as raised:
        resolve([HttpSource(service.url)], deadline=10)
    assert "401" in str(raised.value)
    assert "credentials refused" in str(raised.value)
    assert raised.value.trace.steps[-1].attempts == 1


def test_f_registry_less_user_data_needs_no_registry() -> None:
    settings = settings_for("vm-f")
    document = userdata.build_user_data("vm-f", None, settings["networks"], PUBLIC_KEY, settings)
    with metadata_service(vm("vm-f", userdata.encode(document))) as service:
        resolution = resolve([HttpSource(service.url)], deadline=10)
    assert resolution.settings == settings
    assert resolution.trace.registry_url is None
    assert resolution.trace.steps[-1].outcome == "skipped"


# --- config drive layouts ------------------------------------------------------------------------


def test_config_drive_built_by_genisoimage_is_read(registry: RegistryProcess, tmp_path: Path, genisoimage: str) -> None:
    store(registry, "vm-g", settings_for("vm-g"))
    tree = write_directory(drive_files(vm("vm-g", registry_user_data("vm-g", endpoint_of(registry)))), tmp_path / "t")
    image = tmp_path / "nova.iso"
    subprocess.run(
        [
            genisoimage,
            "-o",
            str(image),
            "-ldots",
            "-allow-lowercase",
            "-allow-multidot",
            "-l",
            "-publisher",
            "OpenStack Compute",
            "-quiet",
            "-J",
            "-r",
            "-V",
            "config-2",
            str(tree),
        ],
        check=True,
        timeout=60,
    )
    resolution = resolve([ConfigDriveSource([str(image)])], deadline=10)
    assert resolution.settings == settings_for("vm-g")
    assert resolution.trace.verdict == "pinned"  # no other source in this order


def test_config_drive_as_a_mounted_directory_is_read(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-m", settings_for("vm-m"))
    mounted = write_directory(drive_files(vm("vm-m", registry_user_data("vm-m", endpoint_of(registry)))), tmp_path)
    assert resolve([ConfigDriveSource([str(mounted)])], deadline=10).settings == settings_for("vm-m")


def test_the_drive_is_read_at_the_stemcells_ec2_paths(registry: RegistryProcess, tmp_path: Path) -> None:
    files = drive_files(vm("vm-e2", registry_user_data("vm-e2", endpoint_of(registry))))
    mounted = write_directory({k: v for k, v in files.items() if k.startswith("ec2/")}, tmp_path)
    found = ConfigDriveSource([str(mounted)]).read(timeout=2)
    assert found.location.endswith("ec2/latest/user-data")
    assert found.public_key == PUBLIC_KEY


def test_an_iso_with_another_label_is_refused(tmp_path: Path, genisoimage: str) -> None:
    (tmp_path / "t").mkdir()
    image = tmp_path / "other.iso"
    subprocess.run(
        [genisoimage, "-o", str(image), "-quiet", "-J", "-r", "-V", "cidata", str(tmp_path / "t")],
        check=True,
        timeout=60,
    )
    with pytest.raises(SourceUnavailable, match="labelled 'cidata', not 'config-2'"):
        ConfigDriveSource([str(image)]).read(timeout=2)


# --- metadata service details --------------------------------------------------------------------


def test_ec2_only_service_keys_the_registry_by_instance_id(registry: RegistryProcess) -> None:
    machine = vm("vm-aws", registry_user_data("vm-aws", endpoint_of(registry)))
    store(registry, machine.instance_id, settings_for("vm-aws"))
    with metadata_service(machine, openstack=False) as service:
        resolution = resolve([HttpSource(service.url, want_instance_id=True)], key="instance-id", deadline=10)
    assert resolution.settings == settings_for("vm-aws")
    assert resolution.trace.source == f"{service.url}/latest/user-data"
    assert resolution.trace.registry_url is not None
    assert resolution.trace.registry_url.endswith(f"/instances/{machine.instance_id}/settings")


def test_a_vm_without_user_data_is_absent_from_the_metadata_service() -> None:
    with (
        metadata_service(vm("vm-empty", None)) as service,
        pytest.raises(ResolveError, match="404: the metadata service has no user data for this VM"),
    ):
        resolve([HttpSource(service.url)], deadline=5)


def test_invalid_user_data_stops_the_agent_at_the_source_it_kept(tmp_path: Path) -> None:
    (tmp_path / "user_data.json").write_bytes(b"#cloud-config\n")
    with metadata_service(vm("vm-i", registry_user_data("vm-i", "http://a:b@10.0.0.5:25777"))) as service:
        user_data_file = str(tmp_path / "user_data.json")
        with pytest.raises(ResolveError) as raised:
            resolve([FileSource(user_data_file, user_data_path=user_data_file), HttpSource(service.url)], deadline=10)
    assert [s.outcome for s in raised.value.trace.steps] == ["invalid"]
    assert "is not JSON" in raised.value.trace.steps[0].detail
    assert "it does not move on to the next source" in str(raised.value)
    assert raised.value.trace.verdict == "broken"


# --- retries under the deadline ------------------------------------------------------------------


def store_late_vm(late: RegistryProcess) -> None:
    store(late, "vm-late", settings_for("vm-late"))


def test_a_registry_that_comes_up_late_is_waited_for(start_registry: RegistryLauncher) -> None:
    with (
        start_registry.starting_late(1.0, then=store_late_vm) as late,
        metadata_service(
            vm("vm-late", registry_user_data("vm-late", f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{late.port}"))
        ) as service,
    ):
        resolution = resolve([HttpSource(service.url)], deadline=30)
    assert resolution.settings == settings_for("vm-late")
    assert resolution.trace.steps[-1].attempts > 1


def test_settings_never_stored_end_in_a_404_that_names_the_key(registry: RegistryProcess) -> None:
    machine = vm("vm-unknown", registry_user_data("vm-unknown", endpoint_of(registry)))
    with metadata_service(machine) as service, pytest.raises(ResolveError) as raised:
        resolve([HttpSource(service.url)], deadline=3)
    assert "404" in str(raised.value)
    assert "no settings under key 'vm-unknown'" in str(raised.value)


# --- the standard library only -------------------------------------------------------------------

STDLIB_CHECK = """
import sys
sys.path.insert(0, {src!r})
import boshreg.agent, boshreg.agent.cli, boshreg.agent.configdrive, boshreg.agent.registry, boshreg.errors
import boshreg.bootstrap.endpoint, boshreg.bootstrap.userdata, boshreg.bootstrap.verdict, boshreg.bootstrap.nova
import boshreg.bootstrap.credentials, boshreg.bootstrap.net, boshreg.bootstrap.registry_key
ours = {{'boshreg', '__main__'}}
outside = sorted({{name.split('.')[0] for name in sys.modules}} - set(sys.stdlib_module_names) - ours)
print(outside)
"""


def test_the_agent_and_bootstrap_packages_import_only_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", STDLIB_CHECK.format(src=str(SRC))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_agent_command_runs_without_site_packages(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-bare", settings_for("vm-bare"))
    with metadata_service(vm("vm-bare", registry_user_data("vm-bare", endpoint_of(registry)))) as service:
        result = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                f"import sys; sys.path.insert(0, {str(SRC)!r}); from boshreg.agent.cli import main; sys.exit(main())",
                "resolve",
                "--source",
                "metadata",
                "--metadata-url",
                service.url,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["settings"] == settings_for("vm-bare")
    assert document["verdict"] == "portable"
