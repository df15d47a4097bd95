"""The live server against its own OpenAPI description, with schemathesis: no 5xx, every answer described."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from boshreg.registry.app import create_app  # noqa: F401 - the description is served by this app
from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET

ADMIN = ("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    launcher = RegistryLauncher(tmp_path_factory.mktemp("openapi"))
    registry = launcher(instance_secret=INSTANCE_SECRET, auth_throttle={"max_failures": 100_000, "window": 1})
    httpx.put(f"{registry.url}/instances/vm-1/settings", content=b'{"agent_id": "a"}', auth=ADMIN)
    yield schemathesis.openapi.from_url(f"{registry.url}/openapi.json")
    launcher.close()


def test_every_answer_matches_the_description(live_schema: schemathesis.BaseSchema) -> None:
    # Driven through schemathesis's own strategies: its pytest plugin does not load under pytest 9.
    results = list(live_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the description itself is invalid"
    assert len(operations) == 10  # every route but /openapi.json itself, which schemathesis leaves out
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(auth=ADMIN)

        conforms()


def test_the_description_names_every_route(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    registry = start_registry()
    paths = httpx.get(f"{registry.url}/openapi.json").json()["paths"]
    assert set(paths) == {
        "/instances/{instance_id}/settings",
        "/instances/{instance_id}/credentials",
        "/instances/{instance_id}/events",
        "/fleet",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }
    response = httpx.post(f"{registry.url}/healthz")
    assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD")
