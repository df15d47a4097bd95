"""Building blocks for agent tests: user data pointing at a real registry, served by the emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import parse_endpoint
from boshreg.testcloud.metadata import MetadataServer
from boshreg.testcloud.vms import TestVm, default_meta_data

from .registry import ADMIN_PASSWORD, RegistryProcess

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI bosh@director"


def settings_for(name: str) -> dict[str, Any]:
    return {
        "agent_id": f"agent-{name}",
        "vm": {"name": name},
        "mbus": "nats://nats:Mbus-Secret@10.0.0.6:4222",
        "networks": {"default": {"type": "dynamic", "dns": ["10.0.0.2"]}},
    }


def store(registry: RegistryProcess, key: str, settings: dict[str, Any]) -> None:
    response = httpx.put(
        f"{registry.url}/instances/{key}/settings",
        content=json.dumps(settings).encode(),
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
    )
    assert response.status_code == 200


def registry_user_data(name: str, endpoint_url: str) -> bytes:
    document = userdata.build_user_data(name, parse_endpoint(endpoint_url), None, PUBLIC_KEY)
    return userdata.encode(document)


def vm(name: str, user_data: bytes | None, ip: str | None = None) -> TestVm:
    return TestVm(name, user_data, default_meta_data(name, PUBLIC_KEY), ip)


@contextmanager
def metadata_service(*vms: TestVm, openstack: bool = True) -> Iterator[MetadataServer]:
    server = MetadataServer("127.0.0.1", 0, list(vms), openstack=openstack).start()
    try:
        yield server
    finally:
        server.stop()
