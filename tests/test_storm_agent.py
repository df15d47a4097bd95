"""The storm's event-loop agent (the agent's requests, retries and readings) and its CPI, against a real registry."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvloop

from boshreg.agent import HttpSource, resolve
from boshreg.bootstrap.endpoint import parse_endpoint
from boshreg.testcloud import vms
from boshreg.testcloud.metadata import MetadataFaults, MetadataServer
from boshreg.testcloud.storm_agent import Booted, BootFailed, boot
from boshreg.testcloud.storm_cpi import store_all
from support.chain import registry_user_data, settings_for, store, vm
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port


@pytest.fixture
def registry(shared_registry: RegistryProcess) -> RegistryProcess:
    return shared_registry


@contextmanager
def metadata(name: str, endpoint: str, faults: MetadataFaults | None = None) -> Iterator[str]:
    """A metadata service whose only VM is ``name``, pointed at ``endpoint``; yields its URL."""
    server = MetadataServer("127.0.0.1", 0, [vm(name, registry_user_data(name, endpoint))], faults=faults).start()
    try:
        yield server.url
    finally:
        server.stop()


def admin_endpoint(registry: RegistryProcess, password: str = ADMIN_PASSWORD) -> str:
    return f"http://admin:{password}@127.0.0.1:{registry.port}"


def boot_now(url: str, deadline: float = 10.0) -> Booted:
    return asyncio.run(boot(url, "127.0.0.1", deadline))


def failure(url: str, deadline: float = 10.0) -> str:
    """What the VM says when it cannot boot (the test fails if it boots)."""
    with pytest.raises(BootFailed) as failed:
        boot_now(url, deadline)
    return str(failed.value)


def test_a_vm_gets_the_settings_the_agent_s_own_resolver_gets(registry: RegistryProcess) -> None:
    store(registry, "vm-lean", settings_for("vm-lean"))
    with metadata("vm-lean", admin_endpoint(registry)) as url:
        booted = boot_now(url)
        resolved = resolve([HttpSource(url)], deadline=10)
    assert booted.settings == settings_for("vm-lean") == resolved.settings
    assert min(booted.source_seconds, booted.registry_seconds) > 0


def test_a_vm_boots_on_uvloop_as_the_storm_runs_it(registry: RegistryProcess) -> None:
    """uvloop's transports are no subclass of asyncio.Transport: the agent must not depend on that."""
    store(registry, "vm-lean-uv", settings_for("vm-lean-uv"))
    with metadata("vm-lean-uv", admin_endpoint(registry)) as url:
        booted = uvloop.run(boot(url, "127.0.0.1", 10.0))
    assert booted.settings == settings_for("vm-lean-uv")


def test_a_flapping_metadata_service_is_retried_a_second_later(registry: RegistryProcess) -> None:
    store(registry, "vm-lean-flap", settings_for("vm-lean-flap"))
    with metadata("vm-lean-flap", admin_endpoint(registry), MetadataFaults(flap=True)) as url:
        booted = boot_now(url)
    assert booted.settings == settings_for("vm-lean-flap")
    assert booted.source_seconds >= HttpSource.retry_delay  # a 503, then the agent's pause, then the answer


def test_refused_credentials_fail_at_once_with_the_agent_s_reading(registry: RegistryProcess) -> None:
    store(registry, "vm-lean-401", settings_for("vm-lean-401"))
    with metadata("vm-lean-401", admin_endpoint(registry, "not-the-password")) as url:
        started = time.monotonic()
        said = failure(url)
    assert re.search(r"^registry GET: 401 .*\(credentials refused\); the user:password", said), said
    assert time.monotonic() - started < 1.0  # the agent does not retry a 401


def test_settings_not_stored_yet_are_retried_until_the_deadline(registry: RegistryProcess) -> None:
    with metadata("vm-lean-unstored", admin_endpoint(registry)) as url:
        said = failure(url, deadline=1.5)
    assert re.search(r"no settings under key 'vm-lean-unstored'.* \(after 2 attempts\)$", said), said


def test_a_vm_the_metadata_service_lost_gets_no_user_data(registry: RegistryProcess) -> None:
    with metadata("vm-lean-lost", admin_endpoint(registry), MetadataFaults(missing=frozenset({"vm-lean-lost"}))) as url:
        said = failure(url)
    assert said.endswith("/latest/user-data: HTTP 404"), said


def test_a_registry_that_is_not_there_is_retried_then_named_without_its_password() -> None:
    with metadata("vm-lean-down", f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{free_port()}") as url:
        said = failure(url, deadline=1.5)
    assert re.search(r"/instances/vm-lean-down/settings: Connection refused \(after 2 attempts\)$", said), said
    assert ADMIN_PASSWORD not in said


def test_an_https_registry_is_named_as_beyond_the_lean_agent() -> None:
    with metadata("vm-lean-tls", f"https://admin:{ADMIN_PASSWORD}@127.0.0.1:{free_port()}") as url:
        said = failure(url)
    assert said == "https://127.0.0.1: the storm's lean agents speak plain HTTP; use --agents resolver"


# --- the storm's CPI (storm_cpi) -----------------------------------------------------------------


def test_the_storm_s_cpi_stores_every_document_once_and_counts_each(registry: RegistryProcess) -> None:
    names = [f"vm-cpi-{n}" for n in range(40)]
    counted: list[None] = []
    store_all(
        parse_endpoint(admin_endpoint(registry)),
        ((name, json.dumps(settings_for(name))) for name in names),
        writers=4,
        stored=lambda: counted.append(None),
    )
    assert len(counted) == 40
    for name in (names[0], names[-1]):
        answer = httpx.get(f"{registry.url}/instances/{name}/settings", auth=("admin", ADMIN_PASSWORD), timeout=10)
        assert json.loads(answer.json()["settings"]) == settings_for(name)


def test_the_storm_s_cpi_names_a_refused_put_with_the_registry_s_words(registry: RegistryProcess) -> None:
    endpoint = parse_endpoint(admin_endpoint(registry, password="not-the-password"))
    with pytest.raises(vms.TestCloudError, match=r"the CPI's PUT of vm-cpi-refused: HTTP 401 \S") as refused:
        store_all(endpoint, [("vm-cpi-refused", "{}")], writers=2, stored=lambda: None)
    assert "not-the-password" not in str(refused.value)


def test_the_storm_s_cpi_names_a_registry_that_is_not_there() -> None:
    endpoint = parse_endpoint(f"http://admin:secret@127.0.0.1:{free_port()}")
    with pytest.raises(vms.TestCloudError, match=r"cannot connect to the registry at 127\.0\.0\.1:\d+"):
        store_all(endpoint, [("vm-cpi-nowhere", "{}")], writers=1, stored=lambda: None)
