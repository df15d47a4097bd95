"""Where a VM finds its user data: one small class per source, behind one protocol.

Each source answers ``read(timeout)`` with the user data (and the instance id or public key where it
has them), or raises ``SourceUnavailable`` saying precisely why not. Ordering, retries and the trace
live in the resolver, not here. Standard library only: this runs inside VMs at boot.
"""

from __future__ import annotations

import json
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from boshreg.agent import configdrive
from boshreg.agent._http import build_opener

DEFAULT_METADATA_URL = "http://169.254.169.254"
DEFAULT_USER_DATA_FILE = "/var/vcap/bosh/user_data.json"


@dataclass(frozen=True)
class SourceData:
    """What a source found: the raw user data, and identity details when the source has them."""

    user_data: bytes
    location: str
    instance_id: str | None = None
    public_key: str | None = None


class SourceUnavailable(Exception):
    """A source that gave no user data.

    ``absent``: the source is not there at all (no metadata service, no drive, no file) and trying
    again will not help. Otherwise the failure may pass (a timeout, a 5xx) and the resolver may retry.
    """

    def __init__(self, reason: str, *, absent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.absent = absent


class SettingsSource(Protocol):
    """One way of getting user data."""

    kind: str  # "metadata", "config-drive" or "file": what the trace and the verdict say

    def describe(self) -> str:
        """Where this source looks, for the trace."""
        ...

    def read(self, timeout: float) -> SourceData:
        """The user data, or SourceUnavailable with the reason."""
        ...


class MetadataServiceSource:
    """The metadata service: OpenStack paths first, EC2 paths as the fallback."""

    kind = "metadata"

    def __init__(self, base_url: str = DEFAULT_METADATA_URL, *, source_address: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # The service answers by the caller's address: connect from the VM's own when it is given.
        self._opener = build_opener(source_address=source_address)

    def describe(self) -> str:
        return f"metadata service {self.base_url}"

    def read(self, timeout: float) -> SourceData:
        try:
            return self._read_openstack(timeout)
        except _NotServed as openstack_missing:
            try:
                return self._read_ec2(timeout)
            except _NotServed as ec2_missing:
                raise SourceUnavailable(
                    f"{self.base_url} serves no user data for this VM ({openstack_missing}; {ec2_missing})",
                    absent=True,
                ) from None

    def _read_openstack(self, timeout: float) -> SourceData:
        meta_url = f"{self.base_url}/openstack/latest/meta_data.json"
        meta = _json_object(self._get(meta_url, timeout), meta_url)
        user_data_url = f"{self.base_url}/openstack/latest/user_data"
        user_data = self._get(user_data_url, timeout)
        return SourceData(user_data, user_data_url, _instance_id(meta), _public_key(meta))

    def _read_ec2(self, timeout: float) -> SourceData:
        user_data_url = f"{self.base_url}/latest/user-data"
        user_data = self._get(user_data_url, timeout)
        instance_id = self._get(f"{self.base_url}/latest/meta-data/instance-id", timeout).decode().strip()
        try:
            key = self._get(f"{self.base_url}/latest/meta-data/public-keys/0/openssh-key", timeout)
            public_key: str | None = key.decode().strip() or None
        except _NotServed:
            public_key = None
        return SourceData(user_data, user_data_url, instance_id or None, public_key)

    def _get(self, url: str, timeout: float) -> bytes:
        try:
            with self._opener.open(url, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _NotServed(f"{url}: 404") from None
            raise SourceUnavailable(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise _connection_failure(url, exc.reason) from None
        except TimeoutError:
            raise SourceUnavailable(f"{url}: no answer within {timeout:.1f} s") from None
        except OSError as exc:
            raise _connection_failure(url, exc) from None


class ConfigDriveSource:
    """A config drive: a mounted directory, an ISO 9660 image, or the block device labelled config-2."""

    kind = "config-drive"

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def describe(self) -> str:
        return f"config drive {self.path or '(label config-2)'}"

    def read(self, timeout: float) -> SourceData:
        try:
            drive = configdrive.open_drive(self.path)
        except configdrive.DriveNotFound as exc:
            raise SourceUnavailable(str(exc), absent=True) from None
        except configdrive.DriveError as exc:
            raise SourceUnavailable(str(exc)) from None
        with drive:
            for user_data_path, meta_path in configdrive.LAYOUTS:
                user_data = drive.read(user_data_path)
                if user_data is None:
                    continue
                meta_raw = drive.read(meta_path)
                meta = _json_object(meta_raw, f"{drive.where}/{meta_path}") if meta_raw else {}
                return SourceData(user_data, f"{drive.where}/{user_data_path}", _instance_id(meta), _public_key(meta))
        raise SourceUnavailable(f"{drive.where} has no {' or '.join(u for u, _ in configdrive.LAYOUTS)}", absent=True)


class FileSource:
    """A user data file, such as the old personality path /var/vcap/bosh/user_data.json."""

    kind = "file"

    def __init__(self, path: str = DEFAULT_USER_DATA_FILE) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file {self.path}"

    def read(self, timeout: float) -> SourceData:
        try:
            return SourceData(Path(self.path).read_bytes(), self.path)
        except FileNotFoundError:
            raise SourceUnavailable(f"{self.path} does not exist", absent=True) from None
        except OSError as exc:
            raise SourceUnavailable(f"cannot read {self.path}: {exc.strerror}") from None


class _NotServed(Exception):
    """A path the metadata service answers 404 for."""


def _connection_failure(url: str, reason: object) -> SourceUnavailable:
    text = str(reason)
    if isinstance(reason, TimeoutError | socket.timeout) or "timed out" in text:
        return SourceUnavailable(f"{url}: no answer (timed out)")
    # Refused, unreachable, no route: nothing serves metadata here.
    return SourceUnavailable(f"{url}: {text}", absent=True)


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SourceUnavailable(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise SourceUnavailable(f"{where} is not a JSON object")
    return value


def _instance_id(meta: dict[str, Any]) -> str | None:
    value = meta.get("uuid") or meta.get("instance-id")
    return str(value) if value else None


def _public_key(meta: dict[str, Any]) -> str | None:
    keys = meta.get("public_keys") or meta.get("public-keys")
    if isinstance(keys, dict) and keys:
        first = next(iter(keys.values()))
        if isinstance(first, dict):  # EC2 layout: {"0": {"openssh-key": "..."}}
            first = first.get("openssh-key")
        return str(first) if first else None
    return None
