"""boshreg doctor over the operator's manifests, and --online against a real registry."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from boshreg.bootstrap.verdict import NOTE_MULTI_NETWORK, Word
from boshreg.cpi import Delivery
from boshreg.doctor import ManifestError, Report, Status, diagnose, load_manifest
from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, free_port

FIXTURES = Path(__file__).parent / "fixtures"


def doctor(name: str, **kwargs: object) -> Report:
    return diagnose(load_manifest(FIXTURES / name), name, resolve=False, **kwargs)  # type: ignore[arg-type]


def statuses(report: Report, check: str) -> list[Status]:
    return [c.status for c in report.checks if c.name == check]


def test_registry_credentials_without_endpoint_fail_with_the_block_to_write() -> None:
    report = doctor("micro_bosh_no_endpoint.yml")
    assert report.failed
    check = next(c for c in report.checks if c.name == "registry endpoint")
    assert check.status is Status.FAIL
    assert check.message == "cloud.properties.registry.endpoint is missing"
    assert check.fix == (
        "write this block under cloud.properties:\n"
        "registry:\n"
        "  endpoint: http://admin:<password>@<registry-host>:25777\n"
        "  user: admin\n"
        "  password: <password>"
    )


def test_the_old_micro_cpi_is_reported_as_legacy_delivery() -> None:
    report = doctor("micro_bosh_no_endpoint.yml")
    assert report.delivery is Delivery.LEGACY
    assert statuses(report, "delivery") == [Status.WARN]


def test_config_drive_and_the_old_default_endpoint_are_each_named() -> None:
    report = doctor("micro_bosh_config_drive.yml")
    assert report.failed  # a loopback endpoint: the VMs' agents reach themselves, not the registry
    assert report.delivery is Delivery.CONFIG_DRIVE
    failed = [c.message for c in report.checks if c.status is Status.FAIL]
    warned = [c.message for c in report.checks if c.status is Status.WARN]
    assert any("loopback address" in m for m in failed)
    assert any("port 25695, the old deployer's default" in m for m in warned)
    assert any("well-known credentials admin:admin" in m for m in warned)
    assert any(
        m.startswith("config drive attached: cloud.properties.openstack.config_drive is 'cdrom'") for m in warned
    )
    assert any("use_dhcp is false" in m for m in warned)
    assert report.verdict is not None
    assert report.verdict.word is Word.BROKEN
    assert report.verdict.fed_by == "config drive ec2/latest/user-data"
    assert NOTE_MULTI_NETWORK in report.verdict.notes


def test_the_fixed_create_env_manifest_is_clean() -> None:
    report = doctor("create_env_fixed.yml")
    assert [c.status for c in report.checks] == [Status.OK, Status.OK, Status.OK, Status.OK]
    assert report.delivery is Delivery.METADATA
    assert report.to_json()["verdict"]["verdict"] == "portable"


def test_cpi_properties_at_top_level_are_read(tmp_path: Path) -> None:
    path = tmp_path / "cpi.yml"
    path.write_text(
        yaml.safe_dump({"openstack": {"auth_url": "x"}, "registry": {"endpoint": "http://a:b@10.1.1.1:25777"}})
    )
    report = diagnose(load_manifest(path), "cpi.yml", resolve=False)
    assert report.source == "cpi.yml (top level)"
    assert not report.failed


def test_reports_never_show_a_password() -> None:
    report = doctor("create_env_fixed.yml")
    assert "Xq3v9LmT2pR7cKw4ZsB8nY1d" not in report.to_text() + str(report.to_json())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [unclosed\n", "not valid YAML at line"),
        ("- a list\n", "not a YAML mapping"),
        ("name: x\n", "found no registry or openstack properties"),
    ],
)
def test_unusable_files_are_manifest_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.yml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        diagnose(load_manifest(path), "m.yml")


# --- --online against a real registry --------------------------------------------------------------


def manifest_for(tmp_path: Path, port: int, password: str) -> Path:
    path = tmp_path / "manifest.yml"
    path.write_text(
        yaml.safe_dump(
            {"cloud_provider": {"properties": {"registry": {"endpoint": f"http://admin:{password}@127.0.0.1:{port}"}}}}
        )
    )
    return path


def online(path: Path) -> Report:
    return diagnose(load_manifest(path), "manifest.yml", online=True, timeout=3, resolve=False)


def test_online_check_passes_against_a_running_registry(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    report = online(manifest_for(tmp_path, registry.port, ADMIN_PASSWORD))
    assert statuses(report, "registry answers") == [Status.OK]


def test_online_check_fails_on_wrong_credentials(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    report = online(manifest_for(tmp_path, registry.port, "not-the-password"))
    assert statuses(report, "registry answers") == [Status.FAIL]
    assert "401" in next(c.message for c in report.checks if c.name == "registry answers")
    assert report.failed


def test_online_check_fails_when_nothing_listens(tmp_path: Path) -> None:
    report = online(manifest_for(tmp_path, free_port(), "pw"))
    check = next(c for c in report.checks if c.name == "registry answers")
    assert (check.status, "connection refused" in check.message) == (Status.FAIL, True)


@pytest.fixture
def static_file_server(tmp_path: Path) -> Iterator[int]:
    """A plain web server that answers 404 for every path: what an endpoint pointing at the wrong port finds."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_online_check_fails_against_a_server_that_is_not_a_registry(static_file_server: int, tmp_path: Path) -> None:
    report = online(manifest_for(tmp_path, static_file_server, "pw"))
    check = next(c for c in report.checks if c.name == "registry answers")
    assert check.status is Status.FAIL
    assert "404 File not found from something that is not a BOSH registry" in check.message
    assert "Content-Type text/html" in check.message
    assert "Server SimpleHTTP/" in check.message
    assert "body b'<!DOCTYPE HTML>" in check.message
    assert check.fix == "point registry.endpoint at the host and port `boshreg serve` listens on"


def test_the_statuses_are_coloured_on_a_terminal_unless_no_color(tmp_path: Path) -> None:
    from support.cli import in_a_terminal

    manifest = str(FIXTURES / "micro_bosh_config_drive.yml")
    coloured = in_a_terminal(["doctor", manifest], tmp_path, {}, exit_codes=(1,))
    assert "\x1b[31m\x1b[1mFAIL" in coloured  # red and bold
    plain = in_a_terminal(["doctor", manifest], tmp_path, {"NO_COLOR": "1"}, exit_codes=(1,))
    assert "FAIL" in plain
    assert "\x1b[" not in plain
