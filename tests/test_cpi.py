"""The create-server bootstrap for each delivery mode, and inspection of captured requests."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from openstack.compute.v2.server import Server

from boshreg.bootstrap.endpoint import parse_endpoint
from boshreg.bootstrap.nova import PERSONALITY_PATH
from boshreg.bootstrap.verdict import COST_MIGRATION, Word
from boshreg.cpi import Delivery, RequestError, inspect_request
from boshreg.cpi.delivery import render

FIXTURES = Path(__file__).parent / "fixtures"
ENDPOINT = parse_endpoint("http://admin:secret@10.0.0.5:25777")
KEY = "ssh-ed25519 AAAAC3Nza bosh@director"


def legacy_request() -> dict[str, Any]:
    request: dict[str, Any] = json.loads((FIXTURES / "legacy_create_server.json").read_text())
    return request


def b64json(document: object) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


# --- delivery modes ------------------------------------------------------------------------------


def test_metadata_delivery_sends_user_data_only() -> None:
    fragment = render("vm-1", endpoint=ENDPOINT, public_key=KEY).nova_fragment()
    assert set(fragment) == {"user_data", "config_drive"}
    assert fragment["config_drive"] is False
    assert json.loads(base64.b64decode(fragment["user_data"]))["openssh"]["public_key"] == KEY


def test_config_drive_delivery_asks_for_a_drive_and_injects_nothing() -> None:
    fragment = render("vm-1", endpoint=ENDPOINT, delivery=Delivery.CONFIG_DRIVE).nova_fragment()
    assert fragment["config_drive"] is True
    assert "personality" not in fragment


def test_legacy_delivery_injects_the_same_document_as_a_personality_file() -> None:
    fragment = render("vm-1", endpoint=ENDPOINT, public_key=KEY, delivery=Delivery.LEGACY).nova_fragment()
    assert fragment["personality"] == [{"path": PERSONALITY_PATH, "contents": fragment["user_data"]}]
    assert "config_drive" not in fragment  # as the old CPI sent it: the injected file implies the drive


@pytest.mark.parametrize("delivery", list(Delivery))
def test_the_public_key_is_in_the_user_data_in_every_mode(delivery: Delivery) -> None:
    fragment = render("vm-1", endpoint=ENDPOINT, public_key=KEY, delivery=delivery).nova_fragment()
    assert json.loads(base64.b64decode(fragment["user_data"]))["openssh"] == {"public_key": KEY}


@pytest.mark.parametrize("delivery", list(Delivery))
def test_openstacksdk_sends_the_fragment_unchanged(delivery: Delivery) -> None:
    bootstrap = render("vm-1", endpoint=ENDPOINT, delivery=delivery)
    server = Server.new(name="vm-1", image_id="img", flavor_id="m1", **bootstrap.openstacksdk_kwargs())
    request_body: Any = server._prepare_request(requires_id=False, prepend_key=True).body
    body = request_body["server"]
    assert {key: body[key] for key in bootstrap.nova_fragment()} == bootstrap.nova_fragment()


def test_registry_less_render_takes_dns_from_the_settings_networks() -> None:
    settings = {"agent_id": "a-1", "networks": {"default": {"ip": "10.0.0.11", "dns": ["10.0.0.2"]}}}
    bootstrap = render("vm-1", settings=settings)
    assert bootstrap.user_data["dns"] == {"nameserver": ["10.0.0.2"]}
    assert "registry" not in bootstrap.user_data


@pytest.mark.parametrize("delivery", list(Delivery))
def test_inspecting_a_rendered_request_agrees_with_its_verdict(delivery: Delivery) -> None:
    bootstrap = render("vm-1", endpoint=ENDPOINT, public_key=KEY, delivery=delivery)
    inspection = inspect_request({"server": {"name": "vm-1", **bootstrap.nova_fragment()}})
    assert inspection.verdict == bootstrap.verdict
    assert inspection.differences == []


# --- inspect -------------------------------------------------------------------------------------


def test_the_operators_legacy_request_is_pinned_and_the_missing_key_is_named() -> None:
    inspection = inspect_request(legacy_request())
    assert inspection.word is Word.PINNED
    assert inspection.differences == ["only the personality copy has openssh.public_key"]
    assert inspection.channels == [
        "metadata service (user_data)",
        f"injected file {PERSONALITY_PATH} (personality)",
        "config drive (implied by injected files)",
    ]
    line = inspection.verdict.line()
    assert line.startswith("pinned; fed by config drive ec2/latest/user-data; without the drive: ")
    assert f"openssh.public_key (only in the injected {PERSONALITY_PATH}) would be lost" in line
    assert "microversion 2.57 and later refuse them with 400" in line


def test_a_metadata_only_request_is_portable() -> None:
    request = legacy_request()
    del request["server"]["personality"]
    inspection = inspect_request(request)
    assert inspection.verdict.line() == "portable; fed by metadata service /latest/user-data"


def test_a_config_drive_with_the_same_user_data_feeds_the_vm_but_leaves_it_portable() -> None:
    request = legacy_request()
    del request["server"]["personality"]
    request["server"]["config_drive"] = "True"  # nova also accepts the string form
    inspection = inspect_request(request)
    assert inspection.word is Word.PORTABLE
    assert inspection.verdict.fed_by == "config drive ec2/latest/user-data"
    assert COST_MIGRATION in inspection.verdict.costs


def test_differing_endpoints_are_shown_redacted() -> None:
    request = legacy_request()
    personality = json.loads(base64.b64decode(request["server"]["personality"][0]["contents"]))
    personality["registry"]["endpoint"] = "http://admin:other-pass@localhost:25695"
    request["server"]["personality"][0]["contents"] = b64json(personality)
    inspection = inspect_request(request)
    assert (
        "registry.endpoint differs: metadata http://admin:***@10.0.0.5:25777, personality "
        "http://admin:***@localhost:25695"
    ) in inspection.differences
    assert "other-pass" not in json.dumps(inspection.to_json()) + inspection.to_text()


def test_only_a_personality_copy_means_nothing_without_the_drive() -> None:
    request = legacy_request()
    del request["server"]["user_data"]
    inspection = inspect_request(request)
    assert inspection.word is Word.BROKEN  # the stemcell's agent reads no injected file: ec2/latest/user-data is empty
    assert inspection.verdict.reasons == ("the request has no user_data: the metadata service answers 404 for it",)


def test_a_request_without_user_data_is_broken() -> None:
    inspection = inspect_request({"server": {"name": "vm-1", "imageRef": "x"}})
    assert inspection.word is Word.BROKEN


def test_other_injected_files_are_listed_and_pin() -> None:
    request = legacy_request()
    request["server"]["personality"].append({"path": "/etc/motd", "contents": base64.b64encode(b"hi").decode()})
    inspection = inspect_request(request)
    assert inspection.other_files == ["/etc/motd (2 bytes)"]
    assert "the injected file /etc/motd would be lost" in inspection.verdict.reasons


def test_the_bare_server_object_is_accepted_too() -> None:
    assert inspect_request(legacy_request()["server"]).word is Word.PINNED


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(user_data="not base64!"), "server.user_data is not valid base64"),
        (lambda s: s.update(user_data=5), "server.user_data is not a base64 string"),
        (lambda s: s.update(user_data=base64.b64encode(b"{oops").decode()), "server.user_data (decoded) is not JSON"),
        (
            lambda s: s.update(user_data=base64.b64encode(b"\xff\xfe").decode()),
            "server.user_data (decoded) is not UTF-8",
        ),
        (lambda s: s["personality"][0].update(contents="%%%"), r"server.personality[0].contents is not valid base64"),
        (lambda s: s.update(personality={"path": "x"}), "server.personality is not a list"),
        (lambda s: s["personality"][0].pop("path"), "server.personality[0] has no path"),
    ],
)
def test_undecodable_fields_are_named(change: Any, message: str) -> None:
    request = copy.deepcopy(legacy_request())
    change(request["server"])
    with pytest.raises(RequestError) as raised:
        inspect_request(request)
    assert message in str(raised.value)


@pytest.mark.parametrize("request_body", [[], "text", {"server": []}])
def test_requests_that_are_not_objects_are_refused(request_body: object) -> None:
    with pytest.raises(RequestError, match="not a JSON object"):
        inspect_request(request_body)
