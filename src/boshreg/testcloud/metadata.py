"""A Nova-compatible metadata service for the test cloud, on the standard library's HTTP server.

It answers the OpenStack paths for every listed version and the EC2 paths, picks the VM by the caller's
source address (or serves its only VM to everyone), and answers 404 for what a VM lacks, as Nova does.
The answers are independent of HTTP; ``MetadataApp`` serves them as ASGI for a boot storm's load.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from starlette.types import Receive, Scope, Send

from boshreg.bootstrap.nova import EC2_VERSIONS, OPENSTACK_VERSIONS
from boshreg.testcloud.vms import TestVm, meta_data_for_version

LOG_MAX = 10_000
_EC2_META_KEYS = ("ami-id", "hostname", "instance-id", "instance-type", "local-hostname", "local-ipv4",
                  "placement/", "public-keys/", "reservation-id")  # fmt: skip


@dataclass
class MetadataFaults:
    """Faults on demand, as real metadata services show them; each one is off by default."""

    delay: float = 0.0  # seconds before every answer (a slow service)
    flap: bool = False  # every other request for each path is a 503 (a service restarting behind a proxy)
    rate_limit: int = 0  # more than this many requests a second from one caller are answered 429
    missing: frozenset[str] = frozenset()  # VMs (by name) the service answers 404 for, as if it lost them

    def describe(self) -> list[str]:
        said = [f"delay {self.delay:g} s"] if self.delay else []
        said += ["flapping (every other request for a path: 503)"] if self.flap else []
        said += [f"rate limit {self.rate_limit}/s per caller (then 429)"] if self.rate_limit else []
        said += [f"404 for {', '.join(sorted(self.missing))}"] if self.missing else []
        return said


@dataclass(frozen=True)
class Request:
    """One request the service answered: who asked for what, and the status."""

    at: float
    client: str
    path: str
    status: int


class MetadataService:
    """The answers, independent of HTTP: ``answer(path, client_ip)`` gives status, type and body."""

    def __init__(self, vms: Sequence[TestVm], *, openstack: bool = True, faults: MetadataFaults | None = None) -> None:
        self.vms = list(vms)
        self.openstack = openstack  # False: EC2 paths only, as on AWS
        self.faults = faults or MetadataFaults()
        self.log: deque[Request] = deque(maxlen=LOG_MAX)  # the request log the drill and `why` show
        self._by_ip = {vm.ip: vm for vm in self.vms if vm.ip}
        self._lock = threading.Lock()
        self._asked: dict[str, int] = {}
        self._per_second: dict[tuple[str, int], int] = {}

    def replace(self, vms: Sequence[TestVm]) -> None:
        """Serve other VMs (or the same VMs with new user data) from now on, as after a re-render."""
        with self._lock:
            self.vms = list(vms)
            self._by_ip = {vm.ip: vm for vm in self.vms if vm.ip}

    def vm_for(self, client_ip: str) -> TestVm | None:
        if client_ip in self._by_ip:
            return self._by_ip[client_ip]
        if len(self.vms) == 1 and not self._by_ip:
            return self.vms[0]
        return None

    def answer(self, path: str, client_ip: str) -> tuple[int, str, bytes]:
        if self.faults.delay:
            time.sleep(self.faults.delay)
        answer = self._fault(path, client_ip) or self._answer(path, client_ip)
        self.log.append(Request(time.time(), client_ip, path, answer[0]))
        return answer

    def _fault(self, path: str, client_ip: str) -> tuple[int, str, bytes] | None:
        with self._lock:
            asked = self._asked[path] = self._asked.get(path, 0) + 1
            if len(self._asked) > LOG_MAX:
                self._asked.clear()
            window = (client_ip, int(time.monotonic()))
            burst = self._per_second.get(window, 0) + 1
            if len(self._per_second) >= LOG_MAX:  # bounded: past it, counting starts again (a storm has 10,000 VMs)
                self._per_second.clear()
            self._per_second[window] = burst
        if self.faults.flap and asked % 2 == 1:
            return 503, "text/plain; charset=utf-8", b"503 Service Unavailable"
        if self.faults.rate_limit and burst > self.faults.rate_limit:
            return 429, "text/plain; charset=utf-8", b"429 Too Many Requests"
        vm = self.vm_for(client_ip)
        if vm is not None and vm.name in self.faults.missing and path.strip("/"):
            return _not_found()
        return None

    def _answer(self, path: str, client_ip: str) -> tuple[int, str, bytes]:
        parts = [p for p in path.split("?")[0].split("/") if p]
        if not parts:  # the root answers without knowing the caller
            return _text("\n".join(EC2_VERSIONS))
        vm = self.vm_for(client_ip)
        if vm is None:
            return _not_found()
        if parts[0] == "openstack" and self.openstack:
            return self._openstack(vm, parts[1:])
        if parts[0] in EC2_VERSIONS:
            return self._ec2(vm, parts[1:], path.endswith("/"))
        return _not_found()

    def _openstack(self, vm: TestVm, parts: list[str]) -> tuple[int, str, bytes]:
        if not parts:
            return _text("\n".join(OPENSTACK_VERSIONS))
        version, rest = parts[0], parts[1:]
        if version not in OPENSTACK_VERSIONS:
            return _not_found()
        files = ["meta_data.json", "password", "vendor_data.json"]
        if version == "latest" or version >= "2015-10-15":
            files.append("network_data.json")
        if version == "latest" or version >= "2016-10-06":
            files.append("vendor_data2.json")
        if vm.user_data is not None:
            files.append("user_data")
        if not rest:
            return _text("\n".join(files))
        name = "/".join(rest)
        if name not in files:
            return _not_found()
        if name == "meta_data.json":
            return _json(meta_data_for_version(vm.meta_data, version))
        if name == "user_data":
            return 200, "application/octet-stream", vm.user_data or b""
        if name == "network_data.json":
            return _json({"links": [], "networks": [], "services": []})
        if name == "password":
            return _text("")
        return _json({})

    def _ec2(self, vm: TestVm, parts: list[str], listing: bool) -> tuple[int, str, bytes]:
        if not parts:
            return _text("meta-data/\nuser-data" if vm.user_data is not None else "meta-data/")
        if parts == ["user-data"]:
            return (200, "application/octet-stream", vm.user_data) if vm.user_data is not None else _not_found()
        if parts[0] != "meta-data":
            return _not_found()
        values = {
            "ami-id": "ami-00000001",
            "hostname": f"{vm.meta_data.get('hostname', vm.name)}.novalocal",
            "instance-id": vm.instance_id,
            "instance-type": "m1.small",
            "local-hostname": f"{vm.meta_data.get('hostname', vm.name)}.novalocal",
            "local-ipv4": vm.ip or "",
            "placement/availability-zone": str(vm.meta_data.get("availability_zone", "nova")),
            "reservation-id": "r-00000001",
        }
        key = "/".join(parts[1:])
        if not key:
            keys = [k for k in _EC2_META_KEYS if k != "public-keys/" or vm.public_key]
            return _text("\n".join(keys))
        if key == "placement":
            return _text("availability-zone")
        if key.startswith("public-keys"):
            return self._public_keys(vm, key)
        return _text(values[key]) if key in values else _not_found()

    def _public_keys(self, vm: TestVm, key: str) -> tuple[int, str, bytes]:
        if vm.public_key is None:
            return _not_found()
        answers = {"public-keys": "0=default", "public-keys/0": "openssh-key",
                   "public-keys/0/openssh-key": vm.public_key}  # fmt: skip
        return _text(answers[key]) if key in answers else _not_found()


class MetadataApp:
    """The same answers as an ASGI application, for serving many VMs at once under uvicorn."""

    def __init__(self, service: MetadataService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        status, content_type, body = self.service.answer(scope["path"], client[0] if client else "")
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Handler(BaseHTTPRequestHandler):
    server: MetadataServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, content_type, body = self.server.service.answer(self.path, self.client_address[0])
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None  # quiet: the tests and `boshreg testcloud boot` print their own trace


class MetadataServer(ThreadingHTTPServer):
    """The metadata service on a socket; ``start()`` serves from a background thread."""

    daemon_threads = True
    # Many VMs boot at once: a short accept queue drops their SYNs and each retry costs them a second.
    request_queue_size = 1024

    def __init__(
        self,
        host: str,
        port: int,
        vms: Sequence[TestVm],
        *,
        openstack: bool = True,
        faults: MetadataFaults | None = None,
    ) -> None:
        self.service = MetadataService(vms, openstack=openstack, faults=faults)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> MetadataServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _text(text: str) -> tuple[int, str, bytes]:
    return 200, "text/plain; charset=utf-8", text.encode()


def _json(document: object) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(document).encode()


def _not_found() -> tuple[int, str, bytes]:
    return 404, "text/html; charset=utf-8", b"<html><body><h1>404 Not Found</h1></body></html>"
