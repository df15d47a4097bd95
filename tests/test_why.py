"""`boshreg why`: one diagnosis per cause of a hang, from a real `boshreg serve`'s database and API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.audit import FLUSH_SECONDS, Event
from boshreg.testcloud.openstack import FakeServer, OpenStackStandIn
from conftest import RegistryLauncher
from support.chain import registry_user_data
from support.cli import assert_one_line_error, boshreg
from support.http import get_from
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = b'{"agent_id": "a-1"}'
AUDIT_WAIT_SECONDS = 10


@pytest.fixture
def cloud() -> Iterator[OpenStackStandIn]:
    stand_in = OpenStackStandIn(
        "bosh",
        "api-key-secret",
        "bosh",
        [FakeServer("vm-ip", fixed=["127.0.0.2"]), FakeServer("vm-x", fixed=["127.0.0.5"])],
    ).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def registry(start_registry: RegistryLauncher, cloud: OpenStackStandIn) -> RegistryProcess:
    """One registry with per-VM credentials and the OpenStack address check for anonymous reads."""
    return start_registry(
        instance_secret=INSTANCE_SECRET,
        request_timeout=5,
        cloud={
            "plugin": "openstack",
            "openstack": {"auth_url": cloud.auth_url, "username": "bosh", "api_key": "api-key-secret",
                          "tenant": "bosh", "region": "RegionOne"},
        },
    )  # fmt: skip


def config_of(registry: RegistryProcess) -> str:
    return registry.args[registry.args.index("--config") + 1]


def put(registry: RegistryProcess, key: str) -> None:
    assert httpx.put(f"{registry.url}/instances/{key}/settings", content=SETTINGS, auth=ADMIN).status_code == 200


def get(registry: RegistryProcess, key: str, auth: tuple[str, str] | None) -> int:
    return httpx.get(f"{registry.url}/instances/{key}/settings", auth=auth).status_code


def why(registry: RegistryProcess, key: str, tmp_path: Path, *extra: str, events: int = 0) -> dict[str, Any]:
    """``boshreg why KEY --json``, once the audit trail holds ``events`` events for the key (written in batches)."""
    deadline = time.monotonic() + AUDIT_WAIT_SECONDS
    while True:
        result = boshreg("why", key, "--config", config_of(registry), "--json", *extra, cwd=tmp_path)
        assert result.returncode in (0, 1), result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        if len(report["registry"]["events"]) >= events or time.monotonic() > deadline:
            assert (result.returncode == 0) == (report["diagnosis"] == "read-ok")
            return report
        time.sleep(0.2)


def test_not_stored(registry: RegistryProcess, tmp_path: Path) -> None:
    report = why(registry, "vm-none", tmp_path)
    assert report["diagnosis"] == "not-stored"
    assert report["registry"]["stored"] is False


def test_stored_and_never_read(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-silent")
    report = why(registry, "vm-silent", tmp_path, events=1)
    assert report["diagnosis"] == "never-read"
    assert report["message"].startswith("settings stored ")
    assert report["message"].endswith("and never read: the VM never reached the registry")


def test_stored_never_read_and_the_user_data_names_localhost(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-local")
    (tmp_path / "user_data.json").write_bytes(registry_user_data("vm-local", "http://admin:admin@localhost:25695"))
    report = why(registry, "vm-local", tmp_path, "--user-data", "user_data.json", events=1)
    assert report["diagnosis"] == "endpoint-unusable"
    assert report["message"].startswith(
        "the VM cannot reach the registry: http://admin:***@localhost:25695 is a loopback"
    )
    assert "admin:admin@" not in json.dumps(report)


def test_reads_refused_401(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-401")
    assert get(registry, "vm-401", ("admin", "wrong")) == 401
    report = why(registry, "vm-401", tmp_path, events=2)
    assert report["diagnosis"] == "refused-401"
    assert report["message"].startswith("the VM's credentials are not accepted")


def test_reads_refused_403_with_another_vms_credential(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-403")
    other = ("vm-x", instance_token(INSTANCE_SECRET, "vm-x"))
    assert get(registry, "vm-403", other) == 403
    report = why(registry, "vm-403", tmp_path, events=2)
    assert report["diagnosis"] == "refused-403"
    assert "--per-vm-credentials" in report["fix"]


def test_reads_with_a_revoked_credential(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-old")
    old = ("vm-old", instance_token(INSTANCE_SECRET, "vm-old"))
    assert httpx.delete(f"{registry.url}/instances/vm-old/settings", auth=ADMIN).status_code == 200
    put(registry, "vm-old")  # re-created under the same name: the old user data's credential is revoked
    assert get(registry, "vm-old", old) == 401
    report = why(registry, "vm-old", tmp_path, events=4)
    assert report["diagnosis"] == "refused-401"
    assert report["message"].startswith("the VM reads with a revoked per-VM credential")
    assert report["registry"]["events"][0]["outcome"] == "revoked"


def test_ip_mismatch(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-ip")
    status, _ = get_from(f"{registry.url}/instances/vm-ip/settings", "127.0.0.5")  # vm-x's address
    assert status == 500
    report = why(registry, "vm-ip", tmp_path, events=2)
    assert report["diagnosis"] == "ip-mismatch"
    assert "from 127.0.0.5" in report["message"]


def test_read_fine(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-ok")
    assert get(registry, "vm-ok", ("vm-ok", instance_token(INSTANCE_SECRET, "vm-ok"))) == 200
    report = why(registry, "vm-ok", tmp_path, events=2)
    assert report["diagnosis"] == "read-ok"
    assert report["message"].startswith("the registry side is fine: vm-ok read its settings")
    assert report["fix"].startswith("look at the agent's log")


def test_the_same_answer_from_a_running_registry(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-api")
    assert get(registry, "vm-api", ("admin", "wrong")) == 401
    why(registry, "vm-api", tmp_path, events=2)  # wait until the audit trail has both
    endpoint = f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}"
    for _ in range(2):  # the second sees what the first left in the trail: no read of its own (once it did)
        result = boshreg("why", "vm-api", "--endpoint", endpoint, "--json", cwd=tmp_path)
        assert result.returncode == 1, result.stdout
        assert json.loads(result.stdout)["diagnosis"] == "refused-401"
        assert ADMIN_PASSWORD not in result.stdout
        time.sleep(2 * FLUSH_SECONDS)  # the trail writer's turns: a read it had made would be written by now
    answer = httpx.get(f"{registry.url}/instances/vm-api/events", auth=ADMIN).json()
    assert answer["stored"] is True
    assert [e for e in answer["events"] if e["action"] == "read" and e["status"] == 200] == []
    assert httpx.get(f"{registry.url}/instances/vm-none/events", auth=ADMIN).json()["stored"] is False


def test_the_events_route_is_for_the_admin_only(registry: RegistryProcess) -> None:
    token = ("vm-x", instance_token(INSTANCE_SECRET, "vm-x"))
    assert httpx.get(f"{registry.url}/instances/vm-x/events", auth=token).status_code == 403
    assert httpx.get(f"{registry.url}/instances/vm-x/events").status_code == 401
    answer = httpx.get(f"{registry.url}/instances/vm-x/events?limit=0", auth=ADMIN)
    assert (answer.status_code, answer.json()["error"]) == (400, "limit must be a whole number from 1 to 1000")


def test_a_saved_agent_trace_is_joined(registry: RegistryProcess, tmp_path: Path) -> None:
    put(registry, "vm-traced")
    trace = {
        "steps": [],
        "source": "http://10.0.0.1/latest/user-data",  # it found user data, naming another key
        "registry_url": "http://admin:***@10.0.0.5:25777/instances/vm-other/settings",
        "verdict_detail": {"verdict": "broken", "reasons": ["registry GET failed"], "line": "broken; ..."},
        "error": "registry GET failed",
    }
    (tmp_path / "trace.json").write_text(json.dumps(trace))
    report = why(registry, "vm-traced", tmp_path, "--trace", "trace.json", events=1)
    assert report["diagnosis"] == "asks-another-key"
    assert report["message"] == "the VM asks for its settings under 'vm-other', not 'vm-traced'"


def test_bad_input_is_one_line(registry: RegistryProcess, tmp_path: Path) -> None:
    (tmp_path / "not-a-trace.json").write_text("[]")
    config = config_of(registry)
    assert_one_line_error(
        boshreg("why", "vm-1", "--config", config, "--trace", "absent.json", cwd=tmp_path), "cannot read --trace"
    )
    assert_one_line_error(
        boshreg("why", "vm-1", "--config", config, "--trace", "not-a-trace.json", cwd=tmp_path), "is not an agent trace"
    )
    assert_one_line_error(boshreg("why", "vm-1", "--data-dir", "nowhere", cwd=tmp_path), "no registry database")


def test_an_event_read_from_the_api_keeps_its_count_and_an_older_registrys_has_none() -> None:
    """``why --endpoint`` reads the trail from the events API: an aggregated read or refusal shows its "xN"
    as ``why --config`` shows it, and an event of a registry from before aggregation (no count) reads as one."""
    at = datetime(2026, 12, 7, 19, 0, tzinfo=UTC)
    aggregated = Event(at, "read", "vm-1", "10.0.0.7", "per-vm", 401, "access_denied", count=3)
    assert Event.from_json(aggregated.to_json()) == aggregated
    assert Event.from_json(json.loads(json.dumps(aggregated.to_json()))).to_text().endswith(" 401 access_denied x3")
    older = {key: value for key, value in aggregated.to_json().items() if key != "count"}
    assert Event.from_json(older).count == 1
    with pytest.raises(KeyError):
        Event.from_json({"at": at.isoformat()})
