"""Where a VM finds its user data: one small class per agent.json source type, behind one protocol.

Each source answers ``read(timeout)`` with what it found, or raises ``SourceUnavailable`` saying
precisely why not. The semantics are bosh-agent's in registry mode (``UseRegistry: true``): a ``File``
source is there when its ``SettingsPath`` exists; a ``ConfigDrive`` when one of its ``DiskPaths`` holds
both the metadata and the user data file as JSON; ``HTTP`` is kept without a probe (the agent commits to
it and fails if it then fails). Ordering, retries and the trace live in the resolver, not here.
Standard library only: this runs inside VMs at boot.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from boshreg.agent import configdrive
from boshreg.agent._http import build_opener
from boshreg.bootstrap import nova
from boshreg.bootstrap.verdict import CONFIG_DRIVE, FILE, METADATA


@dataclass(frozen=True)
class SourceData:
    """What a source found: raw user data (or, for a File source without one, the settings file itself)."""

    location: str
    user_data: bytes | None
    instance_id: str | None = None
    public_key: str | None = None
    settings_file: str | None = None  # a File source with no user data: the agent reads settings from here
    injected: tuple[tuple[str, bytes], ...] = ()  # injected (personality) files on a config drive: path, content


class SourceUnavailable(Exception):
    """A source that gave no user data.

    ``absent``: the source is not there at all (no metadata service, no drive, no file) and trying
    again will not help. Otherwise the failure may pass (a timeout, a 5xx) and the resolver may retry.
    ``unsupported``: a source type of agent.json that boshreg does not implement.
    """

    def __init__(self, reason: str, *, absent: bool = False, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.absent = absent
        self.unsupported = unsupported


class SettingsSource(Protocol):
    """One way of getting user data, as one entry of agent.json's Sources."""

    kind: str  # FILE, CONFIG_DRIVE or METADATA: what the trace and the verdict say
    commits: bool  # True: the agent keeps this source without checking it answers (HTTP)
    attempts: int  # how often the agent tries a failure that may pass
    retry_delay: float  # seconds between those tries

    @property
    def where(self) -> str:
        """Where this source looks: a URL, disk paths or a file."""
        ...

    def describe(self) -> str:
        """The kind and where, for the trace."""
        ...

    def read(self, timeout: float) -> SourceData:
        """The user data, or SourceUnavailable with the reason."""
        ...


class HttpSource:
    """agent.json ``HTTP``: the metadata service at ``URI``, with the stemcell's paths."""

    kind = METADATA
    commits = True
    attempts = 10  # bosh-agent's retry client: 10 tries, 1 s apart
    retry_delay = 1.0

    def __init__(
        self,
        uri: str = nova.METADATA_URL,
        *,
        user_data_path: str = nova.EC2_USER_DATA_PATH,
        instance_id_path: str = nova.EC2_INSTANCE_ID_PATH,
        ssh_keys_path: str = nova.EC2_SSH_KEY_PATH,
        token_path: str = "",
        headers: Mapping[str, str] | None = None,
        want_instance_id: bool = False,
        source_address: str | None = None,
    ) -> None:
        self.uri = uri.rstrip("/")
        self.user_data_path = user_data_path
        self.instance_id_path = instance_id_path
        self.ssh_keys_path = ssh_keys_path
        self.token_path = token_path
        self.headers = dict(headers or {})
        self.want_instance_id = want_instance_id
        # The service answers by the caller's address: connect from the VM's own when it is given.
        self._opener = build_opener(source_address=source_address)

    @property
    def where(self) -> str:
        return self.uri

    def describe(self) -> str:
        return f"metadata service {self.uri}"

    def read(self, timeout: float) -> SourceData:
        headers = dict(self.headers)
        token = self._token(timeout) if self.token_path else None
        if token:
            headers["X-aws-ec2-metadata-token"] = token
        url = f"{self.uri}{self.user_data_path}"
        raw = self._get(url, timeout, headers)
        if raw is None:
            raise SourceUnavailable(f"{url}: 404: the metadata service has no user data for this VM", absent=True)
        public_key = None
        if self.ssh_keys_path:
            key = self._get(f"{self.uri}{self.ssh_keys_path}", timeout, headers)
            public_key = _text_or_none(key)
        instance_id = None
        if self.want_instance_id and self.instance_id_path:
            found = self._get(f"{self.uri}{self.instance_id_path}", timeout, headers)
            instance_id = _text_or_none(found)
        return SourceData(url, json_or_base64(raw), instance_id, public_key)

    def _token(self, timeout: float) -> str | None:
        """IMDSv2: PUT for a session token; any answer but 200 means "go on without one", as the agent does."""
        request = urllib.request.Request(  # noqa: S310 - the URI is the operator's agent.json
            f"{self.uri}{self.token_path}", data=b"", method="PUT"
        )
        request.add_header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return bytes(response.read()).decode("utf-8", "replace").strip() or None
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError) as exc:
            raise _connection_failure(f"{self.uri}{self.token_path}", getattr(exc, "reason", exc)) from None

    def _get(self, url: str, timeout: float, headers: Mapping[str, str]) -> bytes | None:
        """The body, None for a 404, SourceUnavailable for anything else that is not a 2xx."""
        request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310
        try:
            with self._opener.open(request, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            may_pass = exc.code >= 500 or exc.code == 429
            raise SourceUnavailable(f"{url}: HTTP {exc.code} {exc.reason}", absent=not may_pass) from None
        except urllib.error.URLError as exc:
            raise _connection_failure(url, exc.reason) from None
        except TimeoutError:
            raise SourceUnavailable(f"{url}: no answer within {timeout:.1f} s") from None
        except OSError as exc:
            raise _connection_failure(url, exc) from None


class ConfigDriveSource:
    """agent.json ``ConfigDrive``: the first of ``DiskPaths`` that holds both files (a device, image or directory)."""

    kind = CONFIG_DRIVE
    commits = False
    attempts = 1  # the agent reads each disk path once
    retry_delay = 0.0

    def __init__(
        self,
        disk_paths: Sequence[str] = nova.CONFIG_DRIVE_DISK_PATHS,
        *,
        meta_data_path: str = nova.DRIVE_EC2_META_DATA,
        user_data_path: str = nova.DRIVE_EC2_USER_DATA,
    ) -> None:
        self.disk_paths = list(disk_paths)
        self.meta_data_path = meta_data_path
        self.user_data_path = user_data_path

    @property
    def where(self) -> str:
        return ", ".join(self.disk_paths) or "(no DiskPaths)"

    def describe(self) -> str:
        return f"config drive {self.where}"

    def read(self, timeout: float) -> SourceData:
        if not self.disk_paths:
            raise SourceUnavailable("agent.json gives this ConfigDrive source no DiskPaths", absent=True)
        reasons = []
        for disk_path in self.disk_paths:
            try:
                return self._read_disk(disk_path)
            except SourceUnavailable as exc:
                reasons.append(exc.reason)
        raise SourceUnavailable("; ".join(reasons), absent=True)

    def _read_disk(self, disk_path: str) -> SourceData:
        try:
            drive = configdrive.open_drive(disk_path)
        except configdrive.DriveError as exc:
            raise SourceUnavailable(str(exc), absent=True) from None
        with drive:
            meta_raw = drive.read(self.meta_data_path)
            user_data = drive.read(self.user_data_path)
            injected = _injected_files(drive)
        missing = [
            p for p, content in ((self.meta_data_path, meta_raw), (self.user_data_path, user_data)) if not content
        ]
        if missing or meta_raw is None or user_data is None:
            raise SourceUnavailable(f"{drive.where} has no {' and no '.join(missing)}")
        meta = _json_object(meta_raw, f"{drive.where}/{self.meta_data_path}")
        _json_object(user_data, f"{drive.where}/{self.user_data_path}")  # the agent parses it to call the drive there
        where = f"{drive.where}/{self.user_data_path}"
        return SourceData(where, user_data, _instance_id(meta), _public_key(meta), injected=injected)


class FileSource:
    """agent.json ``File``: there when ``SettingsPath`` exists; user data from ``UserDataPath`` if readable.

    Without readable user data the agent takes the settings file itself as its settings (a file registry).
    """

    kind = FILE
    commits = False
    attempts = 1
    retry_delay = 0.0

    def __init__(
        self, settings_path: str = nova.BOOTSTRAP_SETTINGS_PATH, *, user_data_path: str = "", meta_data_path: str = ""
    ) -> None:
        self.settings_path = settings_path
        self.user_data_path = user_data_path
        self.meta_data_path = meta_data_path

    @property
    def where(self) -> str:
        return self.settings_path

    def describe(self) -> str:
        return f"file {self.settings_path}"

    def read(self, timeout: float) -> SourceData:
        if not Path(self.settings_path).exists():
            raise SourceUnavailable(f"{self.settings_path} does not exist", absent=True)
        user_data = _read_if_there(self.user_data_path)
        if user_data is None:
            return SourceData(self.settings_path, None, settings_file=self.settings_path)
        meta_raw = _read_if_there(self.meta_data_path)
        meta = _json_object(meta_raw, self.meta_data_path) if meta_raw else {}
        return SourceData(self.user_data_path, user_data, _instance_id(meta), None)


class UnsupportedSource:
    """An agent.json source type boshreg does not walk: reported in the trace, never skipped silently."""

    kind = "unsupported"
    commits = False
    attempts = 1
    retry_delay = 0.0

    def __init__(self, type_name: str, consequence: str) -> None:
        self.type_name = type_name
        self.consequence = consequence

    @property
    def where(self) -> str:
        return f"(agent.json type {self.type_name})"

    def describe(self) -> str:
        return f"{self.type_name} source"

    def read(self, timeout: float) -> SourceData:
        raise SourceUnavailable(
            f"source type {self.type_name!r} is not implemented by boshreg; {self.consequence}",
            absent=True,
            unsupported=True,
        )


def _injected_files(drive: configdrive.Drive) -> tuple[tuple[str, bytes], ...]:
    """The files Nova injected, as its OpenStack layout lists them (meta_data.json ``files``)."""
    raw = drive.read(nova.DRIVE_OPENSTACK_META_DATA)
    try:
        listed = json.loads(raw).get("files") if raw else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ()
    found: list[tuple[str, bytes]] = []
    for entry in listed if isinstance(listed, list) else []:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("content_path"), str)
        ):
            content = drive.read("openstack/" + entry["content_path"].lstrip("/"))
            if content is not None:
                found.append((entry["path"], content))
    return tuple(found)


def _text_or_none(body: bytes | None) -> str | None:
    return (body.decode("utf-8", "replace").strip() or None) if body is not None else None


def _read_if_there(path: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {path}: {exc.strerror}") from None


def json_or_base64(raw: bytes) -> bytes:
    """The agent's reading of HTTP user data: JSON, or else URL-safe base64 of JSON (quotes stripped)."""
    try:
        json.loads(raw)
        return raw
    except (ValueError, UnicodeDecodeError):
        pass
    text = raw.decode("ascii", "replace").replace('"', "").strip()
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        json.loads(decoded)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return raw  # neither: the resolver reports it as not JSON
    return decoded


def _connection_failure(url: str, reason: object) -> SourceUnavailable:
    text = str(reason)
    if isinstance(reason, TimeoutError | socket.timeout) or "timed out" in text:
        return SourceUnavailable(f"{url}: no answer (timed out)")
    # Refused, unreachable, no route: nothing serves metadata here; the agent's retries end the same way.
    return SourceUnavailable(f"{url}: {text}", absent=True)


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SourceUnavailable(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise SourceUnavailable(f"{where} is not a JSON object")
    return value


def _instance_id(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("instance-id") or meta.get("uuid")
    return str(value) if value else None


def _public_key(meta: Mapping[str, Any]) -> str | None:
    """The first key as the agent reads it: ``public-keys.0.openssh-key`` (EC2), else OpenStack's first."""
    keys = meta.get("public-keys") or meta.get("public_keys")
    if isinstance(keys, Mapping) and keys:
        first = keys.get("0", next(iter(keys.values())))
        if isinstance(first, Mapping):  # EC2 layout: {"0": {"openssh-key": "..."}}
            first = first.get("openssh-key")
        return str(first).strip() if first else None
    return None
