"""The test cloud as Nova's clients see it: metadata paths and versions, VMs by address, drives, the chain."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from boshreg.agent import ConfigDriveSource
from boshreg.agent.sources import SourceUnavailable
from boshreg.bootstrap.nova import EC2_USER_DATA_PATH, OPENSTACK_VERSIONS
from boshreg.registry.audit import query_events
from boshreg.testcloud.storm import _MetadataProcess, vm_address
from support.chain import PUBLIC_KEY, metadata_service, vm
from support.cli import assert_one_line_error, boshreg
from support.http import get_from as get
from support.registry import free_port

USER_DATA = b'{"server":{"name":"vm-1"},"agent_id":"a-1"}'


def test_every_listed_openstack_version_is_served() -> None:
    with metadata_service(vm("vm-1", USER_DATA)) as service:
        status, listing = get(f"{service.url}/openstack")
        versions = listing.decode().split("\n")
        assert (status, versions) == (200, list(OPENSTACK_VERSIONS))
        for version in versions:
            status, body = get(f"{service.url}/openstack/{version}/meta_data.json")
            meta = json.loads(body)
            assert status == 200
            assert {"uuid", "name", "hostname", "launch_index", "availability_zone"} <= set(meta)
            assert get(f"{service.url}/openstack/{version}/user_data") == (200, USER_DATA)
            assert get(f"{service.url}/openstack/{version}/vendor_data.json")[0] == 200


def test_later_versions_add_keys_as_nova_does() -> None:
    with metadata_service(vm("vm-1", USER_DATA)) as service:
        old = json.loads(get(f"{service.url}/openstack/2012-08-10/meta_data.json")[1])
        new = json.loads(get(f"{service.url}/openstack/latest/meta_data.json")[1])
        assert "project_id" not in old
        assert "devices" not in old
        assert "project_id" in new
        assert "devices" in new
        assert get(f"{service.url}/openstack/2013-04-04/network_data.json")[0] == 404
        assert get(f"{service.url}/openstack/2015-10-15/network_data.json")[0] == 200


def test_ec2_paths() -> None:
    machine = vm("vm-1", USER_DATA)
    with metadata_service(machine) as service:
        assert get(f"{service.url}/latest/user-data") == (200, USER_DATA)
        assert get(f"{service.url}/latest/meta-data/instance-id") == (200, machine.instance_id.encode())
        assert machine.instance_id.startswith("i-")
        assert len(machine.instance_id) == 10
        assert get(f"{service.url}/latest/meta-data/public-keys/0/openssh-key") == (200, PUBLIC_KEY.encode())
        listing = get(f"{service.url}/latest/meta-data/")[1].decode().split("\n")
        assert {"instance-id", "public-keys/", "hostname"} <= set(listing)
        assert get(f"{service.url}/2009-04-04/user-data") == (200, USER_DATA)
        assert get(f"{service.url}/")[1].decode().split("\n")[-1] == "latest"


def test_a_vm_without_user_data_gets_404_as_from_nova() -> None:
    with metadata_service(vm("vm-1", None)) as service:
        assert get(f"{service.url}/openstack/latest/user_data")[0] == 404
        assert get(f"{service.url}/latest/user-data")[0] == 404
        assert b"user_data" not in get(f"{service.url}/openstack/latest")[1]


def test_vms_are_told_apart_by_their_address() -> None:
    first, second = vm("vm-1", b'{"n": 1}', ip="127.0.0.2"), vm("vm-2", b'{"n": 2}', ip="127.0.0.3")
    with metadata_service(first, second) as service:
        assert get(f"{service.url}/openstack/latest/user_data", "127.0.0.2") == (200, b'{"n": 1}')
        assert get(f"{service.url}/openstack/latest/user_data", "127.0.0.3") == (200, b'{"n": 2}')
        assert get(f"{service.url}/openstack", "127.0.0.4")[0] == 404  # an unknown caller
        assert get(f"{service.url}/", "127.0.0.4")[0] == 200  # the root answers anyone


# --- commands ------------------------------------------------------------------------------------


def test_config_drive_command_builds_a_config_2_image(tmp_path: Path) -> None:
    (tmp_path / "user_data").write_bytes(USER_DATA)
    (tmp_path / "key.pub").write_text(PUBLIC_KEY)
    result = boshreg(
        "testcloud",
        "config-drive",
        "--user-data",
        "user_data",
        "--name",
        "vm-7",
        "--public-key",
        "key.pub",
        "-o",
        "drive.iso",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    found = ConfigDriveSource([str(tmp_path / "drive.iso")]).read(timeout=2)
    assert (found.user_data, found.public_key) == (USER_DATA, PUBLIC_KEY)
    blkid = subprocess.run(
        ["blkid", "-s", "LABEL", "-o", "value", str(tmp_path / "drive.iso")],
        capture_output=True,
        text=True,
        check=False,
    )
    if blkid.returncode == 0:
        assert blkid.stdout.strip() == "config-2"


def test_metadata_command_serves_vm_directories(tmp_path: Path) -> None:
    (tmp_path / "vm-1").mkdir()
    (tmp_path / "vm-1" / "user_data").write_bytes(USER_DATA)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boshreg",
            "testcloud",
            "metadata",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--vm",
            f"vm-1={tmp_path / 'vm-1'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().startswith(f"metadata service at http://127.0.0.1:{port}")
        assert get(f"http://127.0.0.1:{port}/openstack/latest/user_data") == (200, USER_DATA)
        name = json.loads(get(f"http://127.0.0.1:{port}/openstack/latest/meta_data.json")[1])["name"]
        assert name == "vm-1"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["metadata", "--vm", "nope"], "write NAME=DIR or NAME=DIR@IP"),
        (["metadata", "--vm", "vm-1=/nonexistent"], "is not a directory"),
        (["metadata", "--vm", "vm-1=.@not-an-ip"], "'not-an-ip' is not an IP address"),
        (["metadata", "--port", "nowhere", "--vm", "vm-1=."], "'nowhere' is not a valid integer"),
        (["config-drive", "--user-data", "absent", "-o", "x.iso"], "absent"),
        (["config-drive", "-o", "x.iso"], "no --user-data: the agent finds nothing to boot from"),
        (["config-drive", "--empty", "-o", "missing/x.iso"], "the directory missing does not exist"),
        (["metadata", "--vm", "vm-1=.", "--vm", "vm-2=."], "with 2 VMs each needs @IP"),
        (["metadata", "--vm", "vm-1=.@127.0.0.7", "--vm", "vm-2=.@127.0.0.7"], "127.0.0.7 is already vm-1's"),
    ],
)
def test_testcloud_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    assert_one_line_error(boshreg("testcloud", *args, cwd=tmp_path), expected)


def test_boot_without_a_work_dir_prints_no_path_it_deletes(tmp_path: Path) -> None:
    result = boshreg("testcloud", "boot", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keep it with --work-dir" in result.stdout.splitlines()[0]
    assert "registry.log" not in result.stdout  # the work directory is gone when the command ends


def test_an_empty_config_drive_on_purpose(tmp_path: Path) -> None:
    result = boshreg("testcloud", "config-drive", "--empty", "-o", "empty.iso", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with pytest.raises(SourceUnavailable, match="has no ec2/latest/user-data"):  # as the agent finds it
        ConfigDriveSource([str(tmp_path / "empty.iso")]).read(timeout=2)


@pytest.mark.parametrize(
    ("options", "verdict"),
    [
        ([], "portable"),
        (["--delivery", "config-drive"], "portable"),
        (["--delivery", "config-drive", "--metadata-down"], "pinned"),
        (["--registry-less"], "portable"),
    ],
)
def test_boot_runs_the_whole_chain(tmp_path: Path, options: list[str], verdict: str) -> None:
    result = boshreg("testcloud", "boot", "--work-dir", "work", *options, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("1. registry  boshreg serve at http://127.0.0.1:")
    assert any(line.startswith("4. agent") for line in lines)
    assert lines[-1].startswith("5. result    the agent got the settings the CPI stored")
    assert f"verdict: {verdict}" in result.stdout
    log = (tmp_path / "work" / "registry.log").read_text()
    password = (tmp_path / "work" / "registry" / "admin-password").read_text().strip()
    assert password not in result.stdout + log


def test_boot_json(tmp_path: Path) -> None:
    result = boshreg("testcloud", "boot", "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert (result.returncode, report["ok"], report["trace"]["verdict"]) == (0, True, "portable")


# --- boshreg agent resolve -----------------------------------------------------------------------


def test_agent_resolve_writes_settings_privately_and_the_trace_as_json(tmp_path: Path) -> None:
    settings = {"agent_id": "a-1", "networks": {}}
    document = {**settings, "server": {"name": "vm-1"}}
    with metadata_service(vm("vm-1", json.dumps(document).encode())) as service:
        result = boshreg(
            "agent",
            "resolve",
            "--source",
            "metadata",
            "--metadata-url",
            service.url,
            "--output",
            "settings.json",
            "--json",
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "settings.json").read_text()) == settings
    assert stat.S_IMODE(os.stat(tmp_path / "settings.json").st_mode) == 0o600
    document = json.loads(result.stdout)  # --json: one document on stdout, as every --json
    assert (document["source_kind"], document["settings_file"]) == ("metadata", "settings.json")
    assert "settings" not in document


def test_agent_resolve_failure_is_exit_1_with_the_reason(tmp_path: Path) -> None:
    started = time.monotonic()
    result = boshreg("agent", "resolve", "--source", "file", "--user-data", "absent.json", cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("boshreg: error: no user data from any source (tried file")


def test_agent_resolve_bind_asks_as_the_vm_with_that_address(tmp_path: Path) -> None:
    first = vm("vm-1", b'{"server": {"name": "vm-1"}, "agent_id": "a-1"}', ip="127.0.0.2")
    second = vm("vm-2", b'{"server": {"name": "vm-2"}, "agent_id": "a-2"}', ip="127.0.0.3")
    with metadata_service(first, second) as service:
        results = [
            boshreg("agent", "resolve", "--source", "metadata", "--metadata-url", service.url, *bind, cwd=tmp_path)
            for bind in (["--bind", "127.0.0.3"], ["--bind", "127.0.0.2"], [])
        ]
    assert [json.loads(r.stdout) if r.returncode == 0 else r.returncode for r in results] == [
        {"agent_id": "a-2"},
        {"agent_id": "a-1"},
        1,  # from 127.0.0.1 this cloud knows no VM: no user data
    ]


# --- boshreg testcloud storm ---------------------------------------------------------------------


@pytest.mark.parametrize("agents", ["lean", "resolver"])
def test_storm_gives_every_vm_its_own_settings_through_its_own_credential(tmp_path: Path, agents: str) -> None:
    result = boshreg(
        "testcloud", "storm", "--vms", "60", "--concurrency", "12", "--agents", agents,
        "--work-dir", "work", "--json", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (report["ok"], report["resolved"], report["wrong"], report["failed"]) == (True, 60, 0, 0)
    assert report["agents"] == agents
    assert set(report["per_vm_ms"]) == {"p50", "p99", "p99.9", "max"}
    assert report["registry_ms"]["p50"] > 0
    assert report["registry_cpu_cpi"] > 0  # the registry's own share, apart from the simulation's
    assert report["registry_cpu_boot"] > 0
    engine = create_engine(f"sqlite:///{tmp_path / 'work' / 'registry' / 'registry.db'}")
    reads = [event for event in query_events(engine) if event.action == "read"]
    engine.dispose()
    assert len(reads) == 60
    assert {(event.credential, event.status) for event in reads} == {("per-vm", 200)}
    assert {event.instance_id for event in reads} == {f"vm-storm-{n:06d}" for n in range(60)}
    assert len({event.client for event in reads}) == 60  # each VM from its own address


@pytest.mark.parametrize(("agents", "processes"), [("resolver", max(os.cpu_count() or 1, 4)), ("lean", os.cpu_count())])
def test_a_wide_storm_spreads_its_agents_over_processes(tmp_path: Path, agents: str, processes: int) -> None:
    """128 threads in one resolver lost more to the interpreter lock than they added: at most 64 each.

    An event loop holds 256 VMs at a time without that cost: one per core.
    """
    result = boshreg(
        "testcloud", "storm", "--vms", "40", "--concurrency", "256", "--agents", agents, "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["processes"]) == (True, processes)


def test_the_storm_s_metadata_service_knows_a_vm_by_its_own_address_not_a_forwarded_one() -> None:
    """A VM that sends X-Forwarded-For naming another VM still gets its own user data: even from 127.0.0.1, the
    address uvicorn's proxy-headers middleware trusts by default."""
    vms = [vm("vm-0", b"user data of vm-0", "127.0.0.1"), vm("vm-1", b"user data of vm-1", vm_address(1))]
    with _MetadataProcess(vms) as url, httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as vm0:
        answer = vm0.get(f"{url}{EC2_USER_DATA_PATH}", headers={"X-Forwarded-For": vm_address(1)}, timeout=10)
    assert (answer.status_code, answer.text) == (200, "user data of vm-0")


def test_storm_shows_its_progress_on_a_terminal_only(tmp_path: Path) -> None:
    from support.cli import in_a_terminal

    shown = in_a_terminal(["testcloud", "storm", "--vms", "40", "--concurrency", "8"], tmp_path, {}, stderr_too=True)
    assert "40/40 stored (100%)" in shown
    assert "40/40 booted (100%)" in shown
    assert "registry.log" not in shown  # its work directory is gone at the end: no path to it is printed
    piped = boshreg("testcloud", "storm", "--vms", "20", "--concurrency", "4", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "booted (" not in piped.stdout + piped.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--vms", "0"], "0 is not in the range 1<=x<=100000"),
        (["--concurrency", "5000"], "5000 is not in the range 1<=x<=4096"),
        (["--agents", "threads"], "'threads' is not one of 'lean', 'resolver'"),
    ],
)
def test_storm_usage_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    assert_one_line_error(boshreg("testcloud", "storm", *args, cwd=tmp_path), expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["resolve", "--deadline", "0"], "not between 0 and 3600"),
        (["resolve", "--source", "floppy"], "invalid choice"),
        (["resolve", "--key", "uuid"], "invalid choice"),
        (["resolve", "--bind", "eth0"], "'eth0' is not an IP address"),
        (["resolve", "--bind", "192.0.2.77"], "192.0.2.77 is not an address of this machine"),
        (["resolve", "--metadata-url", "http://127.0.0.1:9", "-o", "gone/s.json"], "the directory gone does not exist"),
        ([], "required"),
    ],
)
def test_agent_usage_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    assert_one_line_error(boshreg("agent", *args, cwd=tmp_path), expected)
