"""A local stand-in for the parts of OpenStack the registry's address check uses, on the real wire format:
Keystone v3 (version discovery, password token issue with a service catalog) and Nova's ``servers``
(version discovery, list with ``name`` filter, detail, one server with its ``addresses``).

Clients such as openstacksdk talk to it as to a cloud, so the registry's check is tested through the
real SDK. Operators can use it the same way to try ``cloud.plugin: openstack`` without a cloud.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeServer:
    """A Nova server: a name and its addresses by network (fixed and floating)."""

    name: str
    fixed: list[str] = field(default_factory=list)
    floating: list[str] = field(default_factory=list)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self, base: str) -> dict[str, Any]:
        addresses = [
            {
                "version": 6 if ":" in ip else 4,
                "addr": ip,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
            }
            for ip in self.fixed
        ]
        addresses += [
            {
                "version": 6 if ":" in ip else 4,
                "addr": ip,
                "OS-EXT-IPS:type": "floating",
                "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
            }
            for ip in self.floating
        ]
        return {
            "id": self.id,
            "name": self.name,
            "status": "ACTIVE",
            "tenant_id": OpenStackStandIn.PROJECT_ID,
            "user_id": OpenStackStandIn.USER_ID,
            "metadata": {},
            "addresses": {"private": addresses} if addresses else {},
            "links": [{"rel": "self", "href": f"{base}/compute/v2.1/servers/{self.id}"}],
            "flavor": {"id": "1", "links": []},
            "image": {"id": "cirros", "links": []},
            "created": "2026-01-01T00:00:00Z",
            "updated": "2026-01-01T00:00:00Z",
            "hostId": "stand-in",
            "accessIPv4": "",
            "accessIPv6": "",
            "config_drive": "",
            "key_name": None,
            "security_groups": [{"name": "default"}],
        }


class OpenStackStandIn(ThreadingHTTPServer):
    """Keystone v3 and Nova on one loopback port; ``auth_url`` is what clients are given."""

    daemon_threads = True
    PROJECT_ID = "6f7c1b2a9d8e4f3a8b7c6d5e4f3a2b1c"
    USER_ID = "0c4e939acacf4376bdcd1129f1a054ad"

    def __init__(
        self,
        username: str,
        password: str,
        project: str,
        servers: list[FakeServer],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.username = username
        self.password = password
        self.project = project
        self.servers = servers
        self.tokens: set[str] = set()
        self.requests: list[str] = []
        self.fail_with: int | None = None  # answer every request with this status (an outage)

    @property
    def base(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://{host}:{port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base}/identity/v3"

    def start(self) -> OpenStackStandIn:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: OpenStackStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        self.server.requests.append(f"{method} {self.path}")
        if self.server.fail_with is not None:
            return self._json(self.server.fail_with, {"error": {"message": "stand-in outage"}})
        if method == "POST" and path == "/identity/v3/auth/tokens":
            return self._issue_token(body)
        if method == "GET" and path in ("", "/identity"):
            return self._json(300, {"versions": {"values": [self._identity_version()]}})
        if method == "GET" and path == "/identity/v3":
            return self._json(200, {"version": self._identity_version()})
        if method == "GET" and path == "/compute":
            return self._json(200, {"versions": [self._compute_version()]})
        if method == "GET" and path == "/compute/v2.1":
            return self._json(200, {"version": self._compute_version()})
        if path.startswith("/compute/v2.1/"):
            if self.headers.get("X-Auth-Token") not in self.server.tokens:
                return self._json(401, {"error": {"message": "The request you have made requires authentication."}})
            return self._compute(path.removeprefix("/compute/v2.1"), parse_qs(parts.query))
        return self._json(404, {"itemNotFound": {"code": 404, "message": "not found"}})

    def _identity_version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.server.base}/identity/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }

    def _compute_version(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.95",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.server.base}/compute/v2.1/"}],
        }

    def _issue_token(self, body: bytes) -> None:
        try:
            auth = json.loads(body)["auth"]
            user = auth["identity"]["password"]["user"]
            ok = user["name"] == self.server.username and user["password"] == self.server.password
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return self._json(
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
            )
        token = secrets.token_hex(16)
        self.server.tokens.add(token)
        now = datetime.now(UTC)
        domain = {"id": "default", "name": "Default"}
        document = {
            "token": {
                "methods": ["password"],
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "expires_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "user": {
                    "id": OpenStackStandIn.USER_ID,
                    "name": self.server.username,
                    "domain": domain,
                    "password_expires_at": None,
                },
                "project": {"id": OpenStackStandIn.PROJECT_ID, "name": self.server.project, "domain": domain},
                "roles": [{"id": "9fe2ff9ee4384b1894a90878d3e92bab", "name": "member"}],
                "is_domain": False,
                "catalog": [
                    {
                        "type": "compute",
                        "name": "nova",
                        "id": "1f2e3d4c5b6a",
                        "endpoints": [
                            {
                                "id": f"e-{interface}",
                                "interface": interface,
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": f"{self.server.base}/compute/v2.1",
                            }
                            for interface in ("public", "internal", "admin")
                        ],
                    },
                    {
                        "type": "identity",
                        "name": "keystone",
                        "id": "0a1b2c3d4e5f",
                        "endpoints": [
                            {
                                "id": f"i-{interface}",
                                "interface": interface,
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": f"{self.server.base}/identity",
                            }
                            for interface in ("public", "internal", "admin")
                        ],
                    },
                ],
            }
        }
        self._json(201, document, {"X-Subject-Token": token})

    def _compute(self, path: str, query: dict[str, list[str]]) -> None:
        base = self.server.base
        if path in ("/servers", "/servers/detail"):
            servers = self.server.servers
            if "name" in query:  # Nova filters by regular expression, as here
                pattern = re.compile(query["name"][0])
                servers = [s for s in servers if pattern.search(s.name)]
            if path == "/servers":
                listed = [{"id": s.id, "name": s.name, "links": s.to_json(base)["links"]} for s in servers]
                return self._json(200, {"servers": listed})
            return self._json(200, {"servers": [s.to_json(base) for s in servers]})
        if path.startswith("/servers/"):
            wanted = path.removeprefix("/servers/")
            for server in self.server.servers:
                if server.id == wanted:
                    return self._json(200, {"server": server.to_json(base)})
            return self._json(404, {"itemNotFound": {"code": 404, "message": f"Instance {wanted} could not be found."}})
        return self._json(404, {"itemNotFound": {"code": 404, "message": "not found"}})

    def _json(self, status: int, document: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
