"""The registry over HTTP on each database: round trips, the original's table, outages and recovery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from conftest import RegistryLauncher
from support.databases import original_table_ddl
from support.proxy import TcpProxy
from support.registry import ADMIN_PASSWORD

ADMIN = ("admin", ADMIN_PASSWORD)
RECOVERY_SECONDS = 10


def settings_url(base: str, instance_id: str) -> str:
    return f"{base}/instances/{instance_id}/settings"


def test_settings_round_trip_over_http(database_url: URL, start_registry: RegistryLauncher) -> None:
    registry = start_registry(database_url)
    document = json.dumps({"agent_id": "a", "env": {"motd": "Grüße 🚀", "blob": "b" * 500_000}}, ensure_ascii=False)
    with httpx.Client(timeout=10, auth=ADMIN) as http:
        assert http.put(settings_url(registry.url, "vm-1"), content=document.encode()).status_code == 200
        assert http.get(settings_url(registry.url, "vm-1")).json() == {"status": "ok", "settings": document}
        assert http.delete(settings_url(registry.url, "vm-1")).status_code == 200
        assert http.get(settings_url(registry.url, "vm-1")).status_code == 404


def test_database_written_by_the_original_registry_is_served_as_is(
    database_url: URL, start_registry: RegistryLauncher
) -> None:
    rows = {
        "vm-old-1": '{"agent_id":"old-1","networks":{"default":{"ip":"10.0.0.7"}}}',
        "vm-old-2": '{ "agent_id" : "old-2" }',
    }
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(original_table_ddl(database_url)))
        for instance_id, settings in rows.items():
            conn.execute(
                text("INSERT INTO registry_instances (instance_id, settings) VALUES (:i, :s)"),
                {"i": instance_id, "s": settings},
            )
    registry = start_registry(database_url)
    with httpx.Client(timeout=10, auth=ADMIN) as http:
        for instance_id, settings in rows.items():
            assert http.get(settings_url(registry.url, instance_id)).json()["settings"] == settings
        assert http.put(settings_url(registry.url, "vm-old-1"), content=b'{"agent_id":"new"}').status_code == 200
        assert http.put(settings_url(registry.url, "vm-new"), content=b'{"agent_id":"n"}').status_code == 200
    with engine.connect() as conn:
        stored: dict[str, int] = dict(conn.execute(text("SELECT instance_id, id FROM registry_instances")).all())
    engine.dispose()
    assert stored["vm-old-1"] == 1  # replaced in place: the row keeps its id
    assert set(stored) == {"vm-old-1", "vm-old-2", "vm-new"}


@pytest.fixture
def proxied_database(server_database_url: URL) -> Iterator[tuple[URL, TcpProxy]]:
    """The test database reached through a proxy that the test can cut."""
    proxy = TcpProxy(server_database_url.host or "127.0.0.1", server_database_url.port or 0).start()
    yield server_database_url.set(host="127.0.0.1", port=proxy.port), proxy
    proxy.close()


def wait_for_status(http: httpx.Client, url: str, status: int, seconds: float) -> float:
    """Poll until ``url`` answers ``status``; return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if http.get(url).status_code == status:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {seconds} s")


@pytest.mark.faults
def test_database_outage_gives_503_and_service_recovers_by_itself(
    proxied_database: tuple[URL, TcpProxy], start_registry: RegistryLauncher
) -> None:
    url, proxy = proxied_database
    registry = start_registry(url, request_timeout=3)
    vm = settings_url(registry.url, "vm-outage")
    with httpx.Client(timeout=20, auth=ADMIN) as http:
        assert http.put(vm, content=b'{"agent_id": "a"}').status_code == 200
        proxy.cut()
        for response in (
            http.get(vm),
            http.put(vm, content=b'{"agent_id": "b"}'),
            http.get(f"{registry.url}/readyz"),
        ):
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            assert response.json()["status"] == "error"
            assert "database" in response.json()["error"]
            assert response.elapsed.total_seconds() < 5
        proxy.restore()
        assert wait_for_status(http, vm, 200, RECOVERY_SECONDS) < RECOVERY_SECONDS
        assert http.get(vm).json()["settings"] == '{"agent_id": "a"}'
        assert http.get(f"{registry.url}/readyz").status_code == 200
    assert "Traceback" not in registry.stderr()


@pytest.mark.faults
def test_hung_database_gives_503_within_the_request_timeout(
    proxied_database: tuple[URL, TcpProxy], start_registry: RegistryLauncher
) -> None:
    url, proxy = proxied_database
    registry = start_registry(url, request_timeout=2)
    vm = settings_url(registry.url, "vm-hang")
    with httpx.Client(timeout=20, auth=ADMIN) as http:
        assert http.put(vm, content=b'{"agent_id": "a"}').status_code == 200
        proxy.stall()
        response = http.get(vm)
        assert response.status_code == 503
        assert "request_timeout" in response.json()["error"]
        assert response.elapsed.total_seconds() < 4
        proxy.restore()
        wait_for_status(http, vm, 200, RECOVERY_SECONDS)


@pytest.mark.faults
def test_registry_starts_while_the_database_is_down_and_serves_once_it_is_up(
    proxied_database: tuple[URL, TcpProxy], start_registry: RegistryLauncher
) -> None:
    url, proxy = proxied_database
    proxy.cut()
    registry = start_registry(url, request_timeout=3)
    with httpx.Client(timeout=20, auth=ADMIN) as http:
        not_ready = http.get(f"{registry.url}/readyz")
        assert not_ready.status_code == 503
        # Anyone may ask /readyz: the answer names no database host, port or user.
        assert not_ready.json() == {
            "status": "error",
            "error": "database unavailable; the registry's log has the cause",
        }
        assert http.get(settings_url(registry.url, "vm-late")).status_code == 503
        proxy.restore()
        wait_for_status(http, f"{registry.url}/readyz", 200, RECOVERY_SECONDS)
        assert http.put(settings_url(registry.url, "vm-late"), content=b"{}").status_code == 200
    assert "answering 503 until it is reachable" in registry.stderr()


def test_debug_logging_shows_no_credentials_or_settings(database_url: URL, start_registry: RegistryLauncher) -> None:
    registry = start_registry(database_url, loglevel="debug")
    secret_settings = '{"mbus": "nats://nats:Mbus-Pa55word@10.0.0.6:4222"}'
    with httpx.Client(timeout=10) as http:
        vm = settings_url(registry.url, "vm-secret")
        assert http.put(vm, content=secret_settings.encode(), auth=ADMIN).status_code == 200
        assert http.get(vm, auth=ADMIN).json()["settings"] == secret_settings
        assert http.get(vm, auth=("admin", "Wr0ng-Guess")).status_code == 401
    log = registry.stderr()
    assert "SELECT registry_instances.settings" in log  # SQL is logged at debug, as the original did
    for secret in ("Mbus-Pa55word", "Wr0ng-Guess", ADMIN_PASSWORD):
        assert secret not in log
