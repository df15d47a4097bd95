"""A stemcell's ``/var/vcap/bosh/agent.json``: which sources the agent walks, in which order, keyed how.

The order is the stemcell's, not ours: a VM is *fed* by the first source there that answers, so the
same VM can be fed by a drive on one stemcell and by the metadata service on another. Without a file,
the current OpenStack stemcell's (stage ``bosh_openstack_agent_settings``) is used. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boshreg.agent.sources import ConfigDriveSource, FileSource, HttpSource, SettingsSource, UnsupportedSource
from boshreg.bootstrap import nova
from boshreg.errors import BoshregError

# Types bosh-agent knows but boshreg does not walk, and what the agent does with them in registry mode.
_NOT_WALKED = {
    "CDROM": "in registry mode (UseRegistry: true) bosh-agent refuses to start: CDROM source is not supported "
    "when registry is used",
    "InstanceMetadata": "in registry mode (UseRegistry: true) bosh-agent refuses to start: Instance Metadata source "
    "is not supported when registry is used",
    "VsphereGuestInfo": "a vSphere source; bosh-agent reads it only on vSphere stemcells",
}


class AgentConfigError(BoshregError):
    """An agent.json that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class AgentSettings:
    """What the agent takes from agent.json: its sources in order, and how it keys the registry."""

    sources: tuple[SettingsSource, ...]
    use_server_name: bool
    use_registry: bool
    where: str  # the file, or "the OpenStack stemcell's default"


def load_agent_config(path: str | None, *, source_address: str | None = None) -> AgentSettings:
    """The sources of ``path`` (an agent.json), or the current OpenStack stemcell's without one."""
    if path is None:
        return agent_settings(
            nova.OPENSTACK_STEMCELL_SETTINGS, "the OpenStack stemcell's default agent.json", source_address
        )
    return agent_settings(read_agent_settings(path), path, source_address)


def read_agent_settings(path: str) -> Mapping[str, Any]:
    """The ``Infrastructure.Settings`` object of an agent.json file."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentConfigError(
            f"--agent-config {path} does not exist", f"copy the stemcell's {nova.AGENT_JSON_PATH}"
        ) from None
    except OSError as exc:
        raise AgentConfigError(f"cannot read --agent-config {path}: {exc.strerror}", "give a readable file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AgentConfigError(
            f"--agent-config {path} is not JSON ({exc})", f"give the stemcell's {nova.AGENT_JSON_PATH}"
        ) from None
    settings = _dig(document, ("Infrastructure", "Settings"))
    if not isinstance(settings, Mapping):
        raise AgentConfigError(
            f"{path} has no Infrastructure.Settings object",
            f"give the stemcell's {nova.AGENT_JSON_PATH}, which has one",
        )
    return settings


def agent_settings(settings: Mapping[str, Any], where: str, source_address: str | None = None) -> AgentSettings:
    """Sources built from an ``Infrastructure.Settings`` object, as bosh-agent decodes it."""
    raw_sources = settings.get("Sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise AgentConfigError(
            f"{where}: Infrastructure.Settings.Sources is missing or empty", "list at least one source"
        )
    use_server_name = settings.get("UseServerName") is True
    sources = tuple(
        _source(entry, index, where, use_server_name, source_address) for index, entry in enumerate(raw_sources)
    )
    return AgentSettings(sources, use_server_name, settings.get("UseRegistry") is True, where)


def retarget(
    agent: AgentSettings,
    *,
    metadata_url: str | None = None,
    disk_paths: Sequence[str] | None = None,
    settings_path: str | None = None,
    user_data_file: str | None = None,
    want_instance_id: bool | None = None,
) -> AgentSettings:
    """The same sources in the same order, pointed elsewhere: the test cloud's metadata service and drives.

    ``user_data_file`` makes each File source read user data from that file (the personality path).
    """
    sources: list[SettingsSource] = []
    for source in agent.sources:
        if isinstance(source, HttpSource):
            source.uri = (metadata_url or source.uri).rstrip("/")
            if want_instance_id is not None:
                source.want_instance_id = want_instance_id
        elif isinstance(source, ConfigDriveSource) and disk_paths is not None:
            source.disk_paths = list(disk_paths)
        elif isinstance(source, FileSource) and user_data_file is not None:
            source = FileSource(user_data_file, user_data_path=user_data_file)
        elif isinstance(source, FileSource) and settings_path is not None:
            source.settings_path = settings_path
        sources.append(source)
    return AgentSettings(tuple(sources), agent.use_server_name, agent.use_registry, agent.where)


def _source(entry: Any, index: int, where: str, use_server_name: bool, source_address: str | None) -> SettingsSource:
    key = f"{where}: Sources[{index}]"
    if not isinstance(entry, Mapping) or "Type" not in entry:
        raise AgentConfigError(f"{key} has no Type", 'give each source a "Type": File, ConfigDrive or HTTP')
    kind = entry["Type"]
    if kind == "HTTP":
        headers = entry.get("Headers") or {}
        return HttpSource(
            _text(entry, "URI", key) or nova.METADATA_URL,
            # Stemcells before 2015 gave only a URI: their agents had these EC2 paths built in.
            user_data_path=_text(entry, "UserDataPath", key) or nova.EC2_USER_DATA_PATH,
            instance_id_path=_text(entry, "InstanceIDPath", key) or nova.EC2_INSTANCE_ID_PATH,
            ssh_keys_path=_text(entry, "SSHKeysPath", key) or nova.EC2_SSH_KEY_PATH,
            token_path=_text(entry, "TokenPath", key),
            headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {},
            want_instance_id=not use_server_name,
            source_address=source_address,
        )
    if kind == "ConfigDrive":
        paths = entry.get("DiskPaths") or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise AgentConfigError(f"{key}.DiskPaths is not a list of paths", "write it as a JSON list of strings")
        return ConfigDriveSource(
            paths, meta_data_path=_text(entry, "MetaDataPath", key), user_data_path=_text(entry, "UserDataPath", key)
        )
    if kind == "File":
        return FileSource(
            _text(entry, "SettingsPath", key),
            user_data_path=_text(entry, "UserDataPath", key),
            meta_data_path=_text(entry, "MetaDataPath", key),
        )
    consequence = _NOT_WALKED.get(str(kind), "bosh-agent itself refuses to start: Unknown source type")
    return UnsupportedSource(str(kind), consequence)


def _text(entry: Mapping[str, Any], name: str, key: str) -> str:
    value = entry.get(name, "")
    if not isinstance(value, str):
        raise AgentConfigError(f"{key}.{name} is not a string", f"write {name} as a JSON string")
    return value


def _dig(document: Any, path: Sequence[str]) -> Any:
    for name in path:
        document = document.get(name) if isinstance(document, Mapping) else None
    return document
