"""GET /metrics: Prometheus' text format from a two-worker `boshreg serve`, read with prometheus-client's own
parser; the counters add up to the requests sent, whichever worker answered each."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.config import ConfigError, parse_config
from boshreg.registry.metrics import metrics_directory, route_of
from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
WAIT_SECONDS = 10  # workers write their counts once a second; this bounds a test's wait for them
SETTINGS_ROUTE = "/instances/{id}/settings"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(
    registry: RegistryProcess, auth: tuple[str, str] | None = ADMIN
) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(f"{registry.url}/metrics", auth=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def settings_requests(samples: Samples) -> Counter[tuple[str, str, str]]:
    counted: Counter[tuple[str, str, str]] = Counter()
    for labels, value in samples.get("boshreg_http_requests_total", []):
        if labels["route"] == SETTINGS_ROUTE:
            counted[(labels["method"], labels["status"], labels["credential"])] += int(value)
    return counted


def test_counters_add_up_to_the_requests_sent_through_both_workers(start_registry: RegistryLauncher) -> None:
    registry = start_registry(instance_secret=INSTANCE_SECRET, workers=2)
    url = f"{registry.url}/instances/%s/settings"
    sent: Counter[tuple[str, str, str]] = Counter()
    own = ("vm-0", instance_token(INSTANCE_SECRET, "vm-0"))
    with httpx.Client(headers={"Connection": "close"}) as client:  # a new connection each: both workers answer
        for n in range(5):
            assert client.put(url % f"vm-{n}", content=b'{"agent_id": "a"}', auth=ADMIN).status_code == 200
            sent["PUT", "200", "admin"] += 1
        for _ in range(30):
            assert client.get(url % "vm-0", auth=own).status_code == 200  # cached after the first: the fast path
            sent["GET", "200", "per-vm"] += 1
        for _ in range(12):
            assert client.get(url % "vm-1", auth=ADMIN).status_code == 200
            sent["GET", "200", "admin"] += 1
        for _ in range(4):
            assert client.get(url % "vm-404", auth=ADMIN).status_code == 404
            sent["GET", "404", "admin"] += 1
        for _ in range(3):
            assert client.get(url % "vm-1", auth=("admin", "wrong")).status_code == 401
            sent["GET", "401", "refused"] += 1
        assert client.get(url % "vm-1", auth=own).status_code == 403
        sent["GET", "403", "per-vm"] += 1
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        samples = scrape(registry)
        if settings_requests(samples) == sent or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert settings_requests(samples) == sent
    durations = {labels["route"]: value for labels, value in samples["boshreg_http_request_duration_seconds_count"]}
    assert durations[SETTINGS_ROUTE] == sum(sent.values())
    assert dict(samples["boshreg_instances_stored"][0][0]) == {}
    assert samples["boshreg_instances_stored"][0][1] == 5
    never_read = {labels["age"]: value for labels, value in samples["boshreg_instances_never_read"]}
    assert never_read["0-1m"] == 3  # vm-2, vm-3, vm-4: stored a moment ago, never read
    assert samples["boshreg_store_up"][0][1] == 1
    assert samples["boshreg_workers"][0][1] == 2
    reads = {labels["operation"]: value for labels, value in samples["boshreg_store_operation_duration_seconds_count"]}
    assert reads["write"] == 5


def test_no_label_names_an_instance(start_registry: RegistryLauncher) -> None:
    registry = start_registry()
    httpx.put(f"{registry.url}/instances/vm-secret-name/settings", content=b'{"a": 1}', auth=ADMIN)
    httpx.get(f"{registry.url}/instances/vm-secret-name/settings", auth=ADMIN)
    httpx.get(f"{registry.url}/instances/vm-secret-name/events", auth=ADMIN)
    text = httpx.get(f"{registry.url}/metrics", auth=ADMIN).text
    assert "vm-secret-name" not in text
    assert 'route="/instances/{id}/events"' in text


def test_who_may_scrape(start_registry: RegistryLauncher) -> None:
    admin_only = start_registry(instance_secret=INSTANCE_SECRET)
    assert httpx.get(f"{admin_only.url}/metrics").status_code == 401
    own = ("vm-1", instance_token(INSTANCE_SECRET, "vm-1"))
    assert httpx.get(f"{admin_only.url}/metrics", auth=own).status_code == 403
    allowed = start_registry(metrics_allow_from=["127.0.0.0/8"])
    scrape(allowed, auth=None)
    elsewhere = start_registry(metrics_allow_from=["10.0.0.0/8"])
    assert httpx.get(f"{elsewhere.url}/metrics").status_code == 401


@pytest.mark.parametrize(
    ("target", "route"),
    [
        (b"/instances/vm-1/settings", SETTINGS_ROUTE),
        (b"/instances/vm-1/credentials?x=1", "/instances/{id}/credentials"),
        (b"/instances/vm-1/other", "other"),
        (b"/instances/a/b/settings", "other"),
        (b"/metrics", "/metrics"),
        (b"/ui/instances/vm-1", "/ui"),
        (b"/anything", "other"),
    ],
)
def test_routes_are_templates(target: bytes, route: str) -> None:
    assert route_of(target) == route


def test_a_scrape_allow_list_entry_that_is_not_a_network_is_named() -> None:
    with pytest.raises(ConfigError, match="'ten' is not an address or network"):
        parse_config({"http": {"password": "pw", "metrics_allow_from": ["10.0.0.0/8", "ten"]}})


def test_a_start_removes_the_snapshot_directories_of_registries_killed_outright(tmp_path: Path) -> None:
    """A registry killed outright (SIGKILL, the OOM killer) cannot remove its directory; the next start does, and
    only those whose process is gone."""
    killed = subprocess.Popen(["true"])
    killed.wait()
    stale = tmp_path / f"boshreg-metrics-{killed.pid}-a1b2"
    running = tmp_path / f"boshreg-metrics-{os.getpid()}-c3d4"
    not_ours = tmp_path / "boshreg-metrics-c5d6e7"  # a name of another form: left as it is
    for directory in (stale, running, not_ours):
        directory.mkdir()
        (directory / "worker-1.json").write_text("{}")
    made = metrics_directory(tmp_path)
    assert (stale.exists(), running.exists(), not_ours.exists()) == (False, True, True)
    assert made.name.startswith(f"boshreg-metrics-{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700
