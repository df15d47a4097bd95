"""The registry API described as OpenAPI 3.1, served at /openapi.json and checked against the live server.

Written out by hand because it is the contract with clients we do not control (the CPI, bosh-agent):
every status a route can answer, and its JSON body.
"""

from __future__ import annotations

from typing import Any

from boshreg import __version__
from boshreg.bootstrap.credentials import USER_NAME_SEPARATOR
from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.registry.audit import EVENTS_DEFAULT, EVENTS_MAX
from boshreg.registry.fleet import AGENT_WAIT_SECONDS, MAX_AGENT_WAIT, State

_ID: dict[str, Any] = {
    "name": "instance_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{REGISTRY_KEY.pattern}$"},
    "description": "The VM's registry key: its server name (OpenStack) or instance id (AWS).",
}

# A per-VM credential's user name is the id, and basic auth cannot carry a ':' in it (400 otherwise).
_CREDENTIAL_ID = {**_ID, "schema": {**_ID["schema"], "not": {"pattern": USER_NAME_SEPARATOR}}}


def _body(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    answer = {"description": description, **_body("Error")}
    if headers:
        answer["headers"] = headers
    return answer


_TIME = {"type": ["string", "null"], "format": "date-time"}
_FLEET_ENTRY = {
    "type": "object",
    "required": ["instance_id", "state", "cause", "reads", "refusals"],
    "properties": {
        "instance_id": {"type": "string"},
        "state": {"enum": [state.value for state in State]},
        "cause": {"type": "string", "description": "For failing: the last refusal's status and outcome"},
        "stored_at": _TIME, "changed_at": _TIME, "size": {"type": ["integer", "null"]},
        "reads": {"type": "integer"}, "first_read_at": _TIME, "last_read_at": _TIME,
        "last_read_client": {"type": ["string", "null"]}, "last_read_credential": {"type": ["string", "null"]},
        "refusals": {"type": "integer"}, "last_refusal_at": _TIME,
        "last_refusal_status": {"type": ["integer", "null"]}, "last_refusal_outcome": {"type": ["string", "null"]},
        "last_refusal_client": {"type": ["string", "null"]},
    },
}  # fmt: skip

_REALM = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Basic realm="Bosh Registry"'}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}}}
_COMMON = {
    "400": _error("Invalid instance id or body"),
    "401": _error("Missing or wrong credentials", **_REALM),
    "403": _error("A VM's credential used for another VM, or to change anything"),
    "429": _error("Too many failed authentications from this address", **_RETRY),
    "503": _error("The database or the cloud cannot be asked now", **_RETRY),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "boshreg registry", "version": __version__,
             "description": "Wire-compatible with the original BOSH registry."},
    "components": {
        "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        "schemas": {
            "Ok": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
            "Settings": {"type": "object", "required": ["status", "settings"],
                         "properties": {"status": {"const": "ok"}, "settings": {
                             "type": "string", "description": "The stored settings JSON text, as stored"}}},
            "Credentials": {"type": "object", "required": ["status", "user", "password", "generation"],
                            "properties": {"status": {"const": "ok"}, "user": {"type": "string"},
                                           "password": {"type": "string"},
                                           "generation": {"type": "integer", "minimum": 0}}},
            "Revoked": {"type": "object", "required": ["status", "user", "generation"],
                        "properties": {"status": {"const": "ok"}, "user": {"type": "string"},
                                       "generation": {"type": "integer", "minimum": 1,
                                                      "description": "The generation of the credential now issued"}}},
            "Error": {"type": "object", "required": ["status"],
                      "properties": {"status": {"enum": ["error", "not_found", "access_denied"]},
                                     "error": {"type": "string"}}},
            "Fleet": {"type": "object", "required": ["status", "now", "agent_wait", "instances"],
                      "properties": {"status": {"const": "ok"}, "now": {"type": "string", "format": "date-time"},
                                     "agent_wait": {"type": "number"},
                                     "instances": {"type": "array", "items": _FLEET_ENTRY}}},
            "AgentSettings": {"type": "object", "description": "The agent settings: any JSON object"},
            "Events": {"type": "object", "required": ["status", "stored", "events"],
                       "properties": {"status": {"const": "ok"}, "stored": {"type": "boolean"},
                                      "events": {"type": "array", "items": {
                           "type": "object",
                           "required": ["at", "action", "instance_id", "client", "credential", "status", "outcome"],
                           "properties": {"at": {"type": "string"}, "action": {"type": "string"},
                                          "instance_id": {"type": "string"}, "client": {"type": "string"},
                                          "credential": {"type": "string"}, "status": {"type": "integer"},
                                          "outcome": {"type": "string"}}}}}},
        },
    },
    "security": [{"basic": []}, {}],
    "paths": {
        "/instances/{instance_id}/settings": {
            "parameters": [_ID],
            "get": {
                "summary": "A VM's settings (basic auth, or none with the address check)",
                "responses": {"200": {"description": "The settings", **_body("Settings")}, **_COMMON,
                              "404": _error("No settings stored for this instance"),
                              "500": _error("Instance IP mismatch (unauthenticated read from another address)")},
            },
            "put": {
                "summary": "Create or replace a VM's settings (admin)",
                "requestBody": {"required": True, **_body("AgentSettings")},
                "responses": {"200": {"description": "Stored", **_body("Ok")}, **_COMMON,
                              "413": _error("Body larger than http.max_body_bytes")},
            },
            "delete": {
                "summary": "Remove a VM's settings (admin); also ok when there were none",
                "responses": {"200": {"description": "Removed", **_body("Ok")}, **_COMMON},
            },
        },
        "/instances/{instance_id}/credentials": {
            "parameters": [_CREDENTIAL_ID],
            "post": {
                "summary": "The VM's read credential, of its current generation (admin)",
                "responses": {"200": {"description": "The credential", **_body("Credentials")}, **_COMMON,
                              "404": _error("Per-VM credentials are off")},
            },
            "delete": {
                "summary": "Revoke the VM's read credential: the next generation is issued from now on (admin)",
                "responses": {"200": {"description": "Revoked", **_body("Revoked")}, **_COMMON,
                              "404": _error("Per-VM credentials are off")},
            },
        },
        "/instances/{instance_id}/events": {
            "parameters": [_ID, {"name": "limit", "in": "query", "required": False,
                                 "schema": {"type": "integer", "minimum": 1, "maximum": EVENTS_MAX,
                                            "default": EVENTS_DEFAULT}}],
            "get": {
                "summary": "The instance's audit trail, newest first (admin): reads, writes and refusals",
                "responses": {"200": {"description": "The events", **_body("Events")}, **_COMMON},
            },
        },
        "/fleet": {
            "parameters": [{"name": "agent_wait", "in": "query", "required": False,
                            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AGENT_WAIT,
                                       "default": AGENT_WAIT_SECONDS},
                            "description": "Seconds a stored, never-read instance is 'waiting' before 'never-read'"}],
            "get": {
                "summary": "Every stored instance and its state (admin): waiting, never-read, ok, failing",
                "responses": {"200": {"description": "The fleet", **_body("Fleet")}, **_COMMON},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format, every worker's counts (admin, or an address of "
                           "http.metrics_allow_from)",
                "responses": {"200": {"description": "The metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": _COMMON["401"], "403": _COMMON["403"], "429": _COMMON["429"]},
            },
        },
        "/healthz": {"get": {"summary": "The process is up", "security": [{}],
                             "responses": {"200": {"description": "Up", **_body("Ok")}}}},
        "/readyz": {"get": {"summary": "The database answers", "security": [{}],
                            "responses": {"200": {"description": "Ready", **_body("Ok")},
                                          "503": _error("The database does not answer")}}},
        "/openapi.json": {"get": {"summary": "This description", "security": [{}],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {"schema": {}}}}}}},
    },
}  # fmt: skip
