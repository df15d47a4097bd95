"""A test cloud's VMs: a name, user data and metadata, as Nova would hold them."""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boshreg.errors import BoshregError

_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


class TestCloudError(BoshregError):
    """A test cloud that cannot be set up as asked; the message names the VM, file or option."""


@dataclass
class TestVm:
    """One VM of the test cloud."""

    name: str
    user_data: bytes | None = None
    meta_data: dict[str, Any] = field(default_factory=dict)
    ip: str | None = None
    injected: dict[str, bytes] = field(default_factory=dict)  # personality files: on the drive only

    def __post_init__(self) -> None:
        self.meta_data = {**default_meta_data(self.name), **self.meta_data}

    @property
    def uuid(self) -> str:
        return str(self.meta_data["uuid"])

    @property
    def instance_id(self) -> str:
        """The EC2 id Nova derives from its numeric id: ``i-%08x``, not the UUID."""
        return f"i-{uuid.UUID(self.uuid).int % 0xFFFFFFFF:08x}"

    @property
    def public_key(self) -> str | None:
        keys = self.meta_data.get("public_keys")
        return str(next(iter(keys.values()))) if isinstance(keys, dict) and keys else None

    @classmethod
    def from_directory(cls, name: str, directory: Path, ip: str | None = None) -> TestVm:
        """A VM from a directory holding ``user_data`` and, optionally, ``meta_data.json``."""
        if not directory.is_dir():
            raise TestCloudError(f"VM {name}: {directory} is not a directory")
        user_data_path = directory / "user_data"
        user_data = user_data_path.read_bytes() if user_data_path.exists() else None
        meta_path = directory / "meta_data.json"
        meta: dict[str, Any] = {}
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise TestCloudError(f"VM {name}: {meta_path} is not JSON") from None
            if not isinstance(meta, dict):
                raise TestCloudError(f"VM {name}: {meta_path} is not a JSON object")
        return cls(name=name, user_data=user_data, meta_data=meta, ip=ip)


def default_meta_data(name: str, public_key: str | None = None) -> dict[str, Any]:
    """What Nova puts in meta_data.json for a VM, with a stable UUID derived from its name."""
    meta: dict[str, Any] = {
        "uuid": str(uuid.uuid5(_NAMESPACE, name)),
        "name": name,
        "hostname": name.lower().replace("_", "-"),
        "launch_index": 0,
        "availability_zone": "nova",
        "project_id": "6f7c1b2a9d8e4f3a8b7c6d5e4f3a2b1c",
        "devices": [],
        "meta": {},
    }
    if public_key:
        meta["public_keys"] = {"default": public_key.strip()}
        meta["keys"] = [{"name": "default", "type": "ssh", "data": public_key.strip()}]
    return meta


def meta_data_for_version(meta: dict[str, Any], version: str) -> dict[str, Any]:
    """meta_data.json as one API version shows it: later versions add keys, as Nova's do."""
    shown = dict(meta)
    if version != "latest" and version < "2016-06-30":
        shown.pop("devices", None)
    if version != "latest" and version < "2017-02-22":
        shown.pop("project_id", None)
    return shown


def check_vm_set(vms: list[TestVm]) -> None:
    """VMs one metadata service can tell apart: it picks a VM by the caller's address, so with more than one,
    each needs its own (else every request would be answered 404)."""
    if len(vms) > 1:
        for vm in vms:
            if vm.ip is None:
                raise TestCloudError(
                    f"--vm {vm.name}: with {len(vms)} VMs each needs @IP (the caller's address picks its VM); "
                    "without it every request is answered 404"
                )
    seen: dict[str, str] = {}
    for vm in vms:
        if vm.ip is not None and vm.ip in seen:
            raise TestCloudError(f"--vm {vm.name}: {vm.ip} is already {seen[vm.ip]}'s address; give each VM its own")
        if vm.ip is not None:
            seen[vm.ip] = vm.name


def parse_vm_spec(spec: str) -> TestVm:
    """``NAME=DIR`` or ``NAME=DIR@IP`` (the VM answered to callers from IP) into a VM."""
    name, equals, rest = spec.partition("=")
    if not equals or not name or not rest:
        raise TestCloudError(f"--vm {spec!r}: write NAME=DIR or NAME=DIR@IP")
    directory, at, ip = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise TestCloudError(f"--vm {spec!r}: {ip!r} is not an IP address") from None
    return TestVm.from_directory(name, Path(directory), ip or None)
