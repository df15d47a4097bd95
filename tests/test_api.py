"""The registry HTTP API over a real socket: every row of the API table, auth, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = '{"agent_id":"agent-1", "vm": {"name": "vm-1"},\n  "env": {"motd": "Grüße 🚀"}}'


@pytest.fixture
def http(shared_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_registry.url, timeout=10) as client:
        yield client


def put(
    http: httpx.Client,
    instance_id: str,
    body: bytes | str,
    auth: tuple[str, str] | None = ADMIN,
    **kwargs: object,
) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return http.put(f"/instances/{instance_id}/settings", content=content, auth=auth, **kwargs)  # type: ignore[arg-type]


def get(http: httpx.Client, instance_id: str, auth: tuple[str, str] | None = ADMIN) -> httpx.Response:
    return http.get(f"/instances/{instance_id}/settings", auth=auth)


def assert_json_error(response: httpx.Response, code: int, status: str) -> dict[str, object]:
    assert response.status_code == code
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    return body


# --- the API table -------------------------------------------------------------------------------


def test_put_then_get_returns_settings_as_stored_text(http: httpx.Client) -> None:
    assert put(http, "vm-roundtrip", SETTINGS).json() == {"status": "ok"}
    response = get(http, "vm-roundtrip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {"status": "ok", "settings": SETTINGS}
    assert json.loads(body["settings"])["vm"]["name"] == "vm-1"  # the agent decodes twice


def test_put_replaces_previous_settings(http: httpx.Client) -> None:
    put(http, "vm-replace", '{"agent_id": "old"}')
    put(http, "vm-replace", '{"agent_id": "new"}')
    assert get(http, "vm-replace").json()["settings"] == '{"agent_id": "new"}'


def test_get_of_unknown_instance_is_not_found(http: httpx.Client) -> None:
    assert_json_error(get(http, "vm-never-stored"), 404, "not_found")


def test_delete_removes_settings(http: httpx.Client) -> None:
    put(http, "vm-delete", SETTINGS)
    response = http.delete("/instances/vm-delete/settings", auth=ADMIN)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert_json_error(get(http, "vm-delete"), 404, "not_found")


def test_delete_of_unknown_instance_is_ok(http: httpx.Client) -> None:
    response = http.delete("/instances/vm-was-never-here/settings", auth=ADMIN)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_additional_users_have_admin_access(http: httpx.Client) -> None:
    assert put(http, "vm-director", SETTINGS, auth=("director", "d1rector-pw")).status_code == 200
    assert get(http, "vm-director", auth=("director", "d1rector-pw")).json()["settings"] == SETTINGS


# --- auth on each route --------------------------------------------------------------------------


def test_put_without_credentials_is_refused_with_the_realm(http: httpx.Client) -> None:
    response = put(http, "vm-noauth", SETTINGS, auth=None)
    assert_json_error(response, 401, "access_denied")
    assert response.headers["www-authenticate"] == 'Basic realm="Bosh Registry"'
    assert_json_error(get(http, "vm-noauth"), 404, "not_found")


@pytest.mark.parametrize("auth", [("admin", "wrong"), ("nobody", ADMIN_PASSWORD), ("director", ADMIN_PASSWORD)])
def test_put_with_wrong_credentials_is_refused(http: httpx.Client, auth: tuple[str, str]) -> None:
    assert_json_error(put(http, "vm-wrongauth", SETTINGS, auth=auth), 401, "access_denied")
    assert_json_error(get(http, "vm-wrongauth"), 404, "not_found")


def test_delete_without_valid_credentials_is_refused_and_keeps_settings(http: httpx.Client) -> None:
    put(http, "vm-keep", SETTINGS)
    for auth in (None, ("admin", "wrong")):
        response = http.delete("/instances/vm-keep/settings", auth=auth)  # type: ignore[arg-type]
        assert_json_error(response, 401, "access_denied")
        assert response.headers["www-authenticate"] == 'Basic realm="Bosh Registry"'
    assert get(http, "vm-keep").json()["settings"] == SETTINGS


def test_get_without_credentials_is_refused_by_default(http: httpx.Client) -> None:
    put(http, "vm-anon", SETTINGS)
    body = assert_json_error(get(http, "vm-anon", auth=None), 401, "access_denied")
    assert "allow_anonymous_reads" in str(body["error"])


def test_get_with_wrong_credentials_is_refused(http: httpx.Client) -> None:
    put(http, "vm-wrongread", SETTINGS)
    assert_json_error(get(http, "vm-wrongread", auth=("admin", "nope")), 401, "access_denied")


@pytest.mark.parametrize("header", ["Basic !!!notbase64", "Basic " + "YWRtaW4=", "Bearer abc"])
def test_malformed_authorization_is_refused(http: httpx.Client, header: str) -> None:
    response = http.get("/instances/vm-x/settings", headers={"Authorization": header})
    assert_json_error(response, 401, "access_denied")


def test_anonymous_reads_when_enabled(start_registry: RegistryLauncher) -> None:
    registry = start_registry(allow_anonymous_reads=True)
    with httpx.Client(base_url=registry.url, timeout=10) as client:
        assert put(client, "vm-open", SETTINGS).status_code == 200
        assert get(client, "vm-open", auth=None).json() == {"status": "ok", "settings": SETTINGS}
        assert_json_error(put(client, "vm-open", "{}", auth=None), 401, "access_denied")
        assert_json_error(client.delete("/instances/vm-open/settings"), 401, "access_denied")


# --- bad bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON"),
        (b"[1, 2]", "JSON object (got an array)"),
        (b'"a string"', "JSON object (got a string)"),
        (b"42", "JSON object (got a number)"),
        (b"null", "JSON object (got null)"),
        (b'{"n": NaN}', "NaN is not a JSON number"),
        (b'{"n": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_put_of_what_an_agent_cannot_parse_is_refused(http: httpx.Client, body: bytes, message: str) -> None:
    put(http, "vm-badbody", '{"agent_id": "previous"}')
    response = put(http, "vm-badbody", body)
    error = assert_json_error(response, 400, "error")
    assert message in str(error["error"])
    assert get(http, "vm-badbody").json()["settings"] == '{"agent_id": "previous"}'


def test_oversized_body_is_refused_before_it_is_read(http: httpx.Client) -> None:
    body = b'{"blob": "' + b"x" * (1024 * 1024) + b'"}'
    error = assert_json_error(put(http, "vm-huge", body), 413, "error")
    assert "max_body_bytes" in str(error["error"])
    assert_json_error(get(http, "vm-huge"), 404, "not_found")


def test_oversized_chunked_body_is_refused(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"blob": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    response = http.put("/instances/vm-chunked/settings", content=chunks(), auth=ADMIN)
    assert_json_error(response, 413, "error")


def test_body_just_under_the_limit_is_stored(http: httpx.Client) -> None:
    body = '{"blob": "' + "z" * (1024 * 1024 - 20) + '"}'
    assert put(http, "vm-nearly-huge", body).status_code == 200
    assert get(http, "vm-nearly-huge").json()["settings"] == body


# --- instance ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("instance_id", ["vm%201", "vm%C3%A9", "a" * 256, "vm;drop", "vm%00"])
def test_invalid_instance_ids_are_refused(http: httpx.Client, instance_id: str) -> None:
    for response in (
        put(http, instance_id, "{}"),
        get(http, instance_id),
        http.delete(f"/instances/{instance_id}/settings", auth=ADMIN),
    ):
        error = assert_json_error(response, 400, "error")
        assert "invalid instance id" in str(error["error"])


@pytest.mark.parametrize(
    "instance_id", ["vm-3f1c9a2e-5b7d-4c1e-9f0a-2b3c4d5e6f70", "i-0abc12345def67890", "a" * 255, "A.b_c:d-e"]
)
def test_real_world_instance_ids_are_accepted(http: httpx.Client, instance_id: str) -> None:
    assert put(http, instance_id, SETTINGS).status_code == 200
    assert get(http, instance_id).json()["settings"] == SETTINGS


# --- other routes --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/instances", "/instances/vm-1", "/instances/vm-1/settings/extra"])
def test_unknown_routes_are_not_found(http: httpx.Client, path: str) -> None:
    assert_json_error(http.get(path, auth=ADMIN), 404, "not_found")


def test_unsupported_method_is_refused_with_allow(http: httpx.Client) -> None:
    response = http.post("/instances/vm-1/settings", content=b"{}", auth=ADMIN)
    assert_json_error(response, 405, "error")
    assert "PUT" in response.headers["allow"]


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ok"}


# --- access log ----------------------------------------------------------------------------------


def test_each_request_is_logged_once_without_credentials(http: httpx.Client, shared_registry: RegistryProcess) -> None:
    put(http, "vm-logged", SETTINGS)
    get(http, "vm-logged", auth=("admin", "a-wrong-password"))
    log = shared_registry.stderr()
    assert len(re.findall(r"PUT /instances/vm-logged/settings 200 \d+\.\dms 127\.0\.0\.1$", log, re.M)) == 1
    assert len(re.findall(r"GET /instances/vm-logged/settings 401 \d+\.\dms 127\.0\.0\.1$", log, re.M)) == 1
    assert "a-wrong-password" not in log
    assert "Authorization" not in log
    assert "Basic " not in log


def test_log_lines_cannot_be_forged_through_the_path(http: httpx.Client, shared_registry: RegistryProcess) -> None:
    http.get("/instances/vm%0aFAKE%20LINE/settings", auth=ADMIN)
    assert "\nFAKE LINE" not in shared_registry.stderr()
