"""The example alert rules and Grafana dashboard in monitoring/: valid for Prometheus' own tool, alerts that
fire as their unit tests say, and every metric they name one that a running registry really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import RegistryLauncher, required_tool
from support.registry import ADMIN_PASSWORD

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself, not the registry
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


@pytest.fixture(scope="module")
def promtool() -> str:
    return required_tool("promtool", "apt-get install prometheus, or make tools as root")


def test_the_rules_are_valid_for_prometheus(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_when_their_unit_tests_say(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def named_metrics(expression: str) -> set[str]:
    """The series names an expression selects (not functions, labels or label values)."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    return set(re.findall(r"\b[a-z_][a-z0-9_]*\b(?=\s*[{\[]|\s*[)=!<>]|\s*$)", without_grouping)) - {
        "and", "or", "unless", "bool",
    }  # fmt: skip


def test_every_metric_the_rules_and_dashboard_name_is_exported(start_registry: RegistryLauncher) -> None:
    registry = start_registry()
    text = httpx.get(f"{registry.url}/metrics", auth=("admin", ADMIN_PASSWORD)).text
    exported = set(PROMETHEUS_OWN)
    for family in text_string_to_metric_families(text):
        exported.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    named = set().union(*(named_metrics(expression) for expression in expressions()))
    assert named, "no metric names found: the parser of this test is broken"
    assert "boshreg_http_request_duration_seconds_bucket" in named
    assert named <= exported, f"named but not exported: {sorted(named - exported)}"


def test_the_name_parser_sees_series_not_functions() -> None:
    expression = 'histogram_quantile(0.99, sum by (le) (rate(boshreg_x_bucket{route="/a{id}"}[5m]))) > 0.5'
    assert named_metrics(expression) == {"boshreg_x_bucket"}
    assert named_metrics("boshreg_store_up == 0") == {"boshreg_store_up"}
    assert named_metrics('sum by (age) (boshreg_y{age!~"a|b"}) > 0') == {"boshreg_y"}
    assert named_metrics("sum by (instance, le) (rate(boshreg_z[5m]))") == {"boshreg_z"}
