"""TLS end to end, and VMs booting with their own read credential instead of the admin's."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from boshreg.agent import HttpSource, ResolveError, resolve
from boshreg.bootstrap.credentials import instance_token
from boshreg.bootstrap.endpoint import parse_endpoint
from conftest import RegistryLauncher
from support.chain import metadata_service, settings_for, vm
from support.cli import assert_one_line_error, boshreg
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

SECRET = INSTANCE_SECRET


@pytest.fixture
def tls_registry(start_registry: RegistryLauncher, tmp_path: Path) -> tuple[RegistryProcess, str]:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(cafile))
    registry = start_registry(tls={"cert": str(cert), "key": str(key)}, instance_secret=SECRET, cafile=str(cafile))
    return registry, str(cafile)


def admin_endpoint(registry: RegistryProcess) -> str:
    return f"{registry.url.replace('://', f'://admin:{ADMIN_PASSWORD}@')}"


def test_settings_round_trip_over_https(tls_registry: tuple[RegistryProcess, str], tmp_path: Path) -> None:
    registry, cafile = tls_registry
    (tmp_path / "s.json").write_text('{"agent_id": "a-1"}')
    env = {"BOSHREG_ENDPOINT": admin_endpoint(registry), "BOSHREG_CACERT": cafile}
    assert boshreg("settings", "put", "vm-1", "s.json", cwd=tmp_path, env=env).returncode == 0
    assert boshreg("settings", "get", "vm-1", cwd=tmp_path, env=env).stdout == '{"agent_id": "a-1"}\n'
    assert registry.stdout().startswith(f"boshreg registry listening on https://127.0.0.1:{registry.port}")


def test_an_untrusted_certificate_is_one_line(tls_registry: tuple[RegistryProcess, str], tmp_path: Path) -> None:
    registry, _ = tls_registry
    result = boshreg("settings", "get", "vm-1", "--endpoint", admin_endpoint(registry), cwd=tmp_path)
    assert_one_line_error(result, "CERTIFICATE_VERIFY_FAILED")
    assert ADMIN_PASSWORD not in result.stderr


def test_the_agent_resolves_over_https_with_its_own_credential(tls_registry: tuple[RegistryProcess, str]) -> None:
    registry, cafile = tls_registry
    httpx.put(
        f"{registry.url}/instances/vm-t/settings",
        content=json.dumps(settings_for("vm-t")).encode(),
        auth=("admin", ADMIN_PASSWORD),
        verify=ssl.create_default_context(cafile=cafile),
    )
    endpoint = f"https://vm-t:{instance_token(SECRET, 'vm-t')}@127.0.0.1:{registry.port}"
    user_data = json.dumps({"server": {"name": "vm-t"}, "registry": {"endpoint": endpoint}}).encode()
    with metadata_service(vm("vm-t", user_data)) as service:
        resolution = resolve([HttpSource(service.url)], deadline=10, cacert=cafile)
        assert resolution.settings == settings_for("vm-t")
        with pytest.raises(ResolveError, match=r"TLS: .*give its CA with --cacert") as raised:
            resolve([HttpSource(service.url)], deadline=10)
        assert raised.value.trace.steps[-1].attempts == 1  # a certificate does not fix itself


# --- the CPI side puts the per-VM credential into the user data -------------------------------------


@pytest.fixture
def registry(start_registry: RegistryLauncher) -> RegistryProcess:
    return start_registry(instance_secret=SECRET)


def rendered_endpoint(result_stdout: str) -> str:
    return str(json.loads(result_stdout)["user_data"]["registry"]["endpoint"])


def test_render_uses_the_secret_when_known(registry: RegistryProcess, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    result = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-1",
        "--endpoint",
        admin_endpoint(registry),
        "--instance-secret-file",
        "secret",
        "--json",
        cwd=tmp_path,
    )
    # The test registry listens on loopback, where no real VM reaches it: rendered, and judged broken (exit 1).
    assert (result.returncode, json.loads(result.stdout)["verdict"]) == (1, "broken"), result.stderr
    assert rendered_endpoint(result.stdout) == f"http://vm-1:{instance_token(SECRET, 'vm-1')}@127.0.0.1:{registry.port}"
    assert result.stderr == ""


def test_render_asks_the_registry_for_the_credential(registry: RegistryProcess, tmp_path: Path) -> None:
    result = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-2",
        "--endpoint",
        admin_endpoint(registry),
        "--per-vm-credentials",
        "--json",
        cwd=tmp_path,
    )
    # The test registry listens on loopback, where no real VM reaches it: rendered, and judged broken (exit 1).
    assert (result.returncode, json.loads(result.stdout)["verdict"]) == (1, "broken"), result.stderr
    assert rendered_endpoint(result.stdout).startswith(f"http://vm-2:{instance_token(SECRET, 'vm-2')}@")


def test_render_warns_when_the_admin_credential_goes_into_a_vm(registry: RegistryProcess, tmp_path: Path) -> None:
    result = boshreg(
        "userdata", "render", "--name", "vm-3", "--endpoint", admin_endpoint(registry), "--json", cwd=tmp_path
    )
    assert rendered_endpoint(result.stdout).startswith("http://admin:")
    assert result.stderr.startswith("warning: the user data carries the admin credential")
    quiet = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-3",
        "--endpoint",
        admin_endpoint(registry),
        "--no-per-vm-credentials",
        "--json",
        cwd=tmp_path,
    )
    assert quiet.stderr == ""


def test_a_vm_booted_with_its_own_credential_resolves_and_cannot_read_others(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    for name in ("vm-own", "vm-other"):
        httpx.put(
            f"{registry.url}/instances/{name}/settings",
            content=json.dumps(settings_for(name)).encode(),
            auth=("admin", ADMIN_PASSWORD),
        )
    result = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-own",
        "--endpoint",
        admin_endpoint(registry),
        "--per-vm-credentials",
        "--json",
        cwd=tmp_path,
    )
    user_data = json.dumps(json.loads(result.stdout)["user_data"]).encode()
    with metadata_service(vm("vm-own", user_data)) as service:
        assert resolve([HttpSource(service.url)], deadline=10).settings == settings_for("vm-own")
    own = parse_endpoint(json.loads(user_data)["registry"]["endpoint"])
    assert own.user == "vm-own"
    response = httpx.get(f"{registry.url}/instances/vm-other/settings", auth=(own.user, own.password or ""))
    assert response.status_code == 403


def test_render_refuses_a_per_vm_credential_basic_auth_cannot_carry(registry: RegistryProcess, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    result = boshreg(
        "userdata", "render", "--name", "vm:1", "--endpoint", admin_endpoint(registry),
        "--instance-secret-file", "secret", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "basic auth cannot carry ':'" in result.stderr
