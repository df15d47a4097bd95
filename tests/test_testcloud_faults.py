"""Faults on demand in the test cloud: for each one, the agent's trace line and `boshreg why`'s diagnosis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from boshreg.bootstrap import nova
from boshreg.testcloud.configdrive import drive_files, write_iso
from boshreg.testcloud.metadata import MetadataFaults, MetadataServer
from conftest import RegistryLauncher
from support.chain import registry_user_data, settings_for, store, vm
from support.cli import boshreg
from support.registry import ADMIN_PASSWORD, RegistryProcess

AUDIT_WAIT_SECONDS = 10


@dataclass
class Outcome:
    """What the agent said (its trace, as `agent resolve --json` prints it) and what `why` said."""

    code: int
    trace: dict[str, Any]
    why: dict[str, Any]

    def step(self, step: str, outcome: str, name: str = "") -> dict[str, Any]:
        """The first step of this kind and outcome whose source's name starts with ``name``."""
        return next(
            s
            for s in self.trace["steps"]
            if (s["step"], s["outcome"]) == (step, outcome) and s["name"].startswith(name)
        )


@pytest.fixture
def registry(start_registry: RegistryLauncher) -> RegistryProcess:
    return start_registry()


@contextmanager
def served(name: str, registry: RegistryProcess, faults: MetadataFaults) -> Iterator[str]:
    """The metadata service for ``name``, with ``faults``; yields its URL."""
    endpoint = f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}"
    server = MetadataServer("127.0.0.1", 0, [vm(name, registry_user_data(name, endpoint))], faults=faults).start()
    try:
        yield server.url
    finally:
        server.stop()


def resolve_and_why(
    name: str, config: str, tmp_path: Path, *options: str, reads: int = 0, deadline: float = 15
) -> Outcome:
    agent = boshreg("agent", "resolve", *options, "--deadline", f"{deadline:g}", "--json", cwd=tmp_path)
    (tmp_path / "trace.json").write_text(agent.stdout)
    wait_until = time.monotonic() + AUDIT_WAIT_SECONDS
    while True:  # the audit trail is written in batches
        said = boshreg("why", name, "--config", config, "--trace", "trace.json", "--json", cwd=tmp_path)
        report = json.loads(said.stdout)
        # Successful reads are written in aggregate every few seconds, after a refusal written at once.
        reads_seen = sum(1 for e in report["registry"]["events"] if (e["action"], e["status"]) == ("read", 200))
        if reads_seen >= reads or time.monotonic() > wait_until:
            return Outcome(agent.returncode, json.loads(agent.stdout), report)
        time.sleep(0.2)


def config_of(registry: RegistryProcess) -> str:
    return registry.args[registry.args.index("--config") + 1]


def no_drive(tmp_path: Path) -> list[str]:
    return ["--config-drive", str(tmp_path / "no-drive.iso")]


def test_a_slow_metadata_service_is_waited_for(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-slow", settings_for("vm-slow"))
    with served("vm-slow", registry, MetadataFaults(delay=0.5)) as url:
        outcome = resolve_and_why(
            "vm-slow", config_of(registry), tmp_path, *no_drive(tmp_path), "--metadata-url", url, reads=1
        )
    assert outcome.code == 0
    assert outcome.step("source", "ok")["seconds"] >= 1.0  # the user data and the key: two slow answers
    assert outcome.why["diagnosis"] == "read-ok"


def test_a_flapping_metadata_service_is_retried(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-flap", settings_for("vm-flap"))
    with served("vm-flap", registry, MetadataFaults(flap=True)) as url:
        outcome = resolve_and_why(
            "vm-flap", config_of(registry), tmp_path, *no_drive(tmp_path), "--metadata-url", url, reads=1
        )
    assert outcome.code == 0
    assert outcome.step("source", "ok")["attempts"] == 4  # 503, then the key 503, then 503, then both answer
    assert outcome.why["diagnosis"] == "read-ok"


def test_a_rate_limited_metadata_service_keeps_the_vm_from_its_registry(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    store(registry, "vm-429", settings_for("vm-429"))
    with served("vm-429", registry, MetadataFaults(rate_limit=1)) as url:
        outcome = resolve_and_why(
            "vm-429", config_of(registry), tmp_path, *no_drive(tmp_path), "--metadata-url", url, deadline=3
        )
    assert outcome.code == 1
    assert "HTTP 429 Too Many Requests" in outcome.step("source", "failed")["detail"]
    assert outcome.trace["verdict"] == "broken"
    assert outcome.why["diagnosis"] == "no-user-data"


def test_a_metadata_service_that_lost_the_vm_answers_404(registry: RegistryProcess, tmp_path: Path) -> None:
    store(registry, "vm-lost", settings_for("vm-lost"))
    with served("vm-lost", registry, MetadataFaults(missing=frozenset({"vm-lost"}))) as url:
        outcome = resolve_and_why("vm-lost", config_of(registry), tmp_path, *no_drive(tmp_path), "--metadata-url", url)
    assert outcome.code == 1
    detail = outcome.step("source", "absent", "metadata service")["detail"]
    assert detail.endswith("404: the metadata service has no user data for this VM")
    assert outcome.why["diagnosis"] == "no-user-data"


@pytest.mark.parametrize(
    ("fault", "said"),
    [("wrong-label", "labelled 'cidata', not 'config-2'"), ("missing-file", "has no ec2/latest/user-data")],
)
def test_a_faulty_drive_is_passed_over_for_the_metadata_service(
    registry: RegistryProcess, tmp_path: Path, fault: str, said: str
) -> None:
    store(registry, "vm-drive", settings_for("vm-drive"))
    endpoint = f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{registry.port}"
    files = drive_files(vm("vm-drive", registry_user_data("vm-drive", endpoint)))
    if fault == "missing-file":
        files = {path: content for path, content in files.items() if path != nova.DRIVE_EC2_USER_DATA}
    drive = write_iso(files, tmp_path / "drive.iso", label="cidata" if fault == "wrong-label" else "config-2")
    with served("vm-drive", registry, MetadataFaults()) as url:
        outcome = resolve_and_why(
            "vm-drive", config_of(registry), tmp_path, "--config-drive", str(drive), "--metadata-url", url, reads=1
        )
    assert outcome.code == 0
    assert said in outcome.step("source", "absent", "config drive")["detail"]
    assert outcome.trace["source_kind"] == "metadata"
    assert outcome.why["diagnosis"] == "read-ok"


def test_a_registry_that_is_down_at_first_is_waited_for(start_registry: RegistryLauncher, tmp_path: Path) -> None:
    def stored(late: RegistryProcess) -> None:
        store(late, "vm-late", settings_for("vm-late"))

    with start_registry.starting_late(2.0, then=stored) as late, served("vm-late", late, MetadataFaults()) as url:
        outcome = resolve_and_why(
            "vm-late", config_of(late), tmp_path, *no_drive(tmp_path), "--metadata-url", url, reads=1
        )
    assert outcome.code == 0
    assert outcome.step("registry", "ok")["attempts"] > 1
    assert outcome.why["diagnosis"] == "read-ok"


def test_the_metadata_service_keeps_a_request_log() -> None:
    machine = vm("vm-log", b"{}", "127.0.0.7")
    server = MetadataServer("127.0.0.1", 0, [machine], faults=MetadataFaults(missing=frozenset({"vm-other"})))
    status, _, _ = server.service.answer("/latest/user-data", "127.0.0.7")
    unknown, _, _ = server.service.answer("/latest/user-data", "127.0.0.8")
    server.server_close()
    assert [(r.client, r.path, r.status) for r in server.service.log] == [
        ("127.0.0.7", "/latest/user-data", 200),
        ("127.0.0.8", "/latest/user-data", 404),
    ]
    assert (status, unknown) == (200, 404)
