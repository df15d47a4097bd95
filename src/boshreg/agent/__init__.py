"""Inside the VM: find the user data, then the settings, the way bosh-agent does. Standard library only."""

from boshreg.agent.agent_json import AgentSettings, load_agent_config
from boshreg.agent.resolver import Resolution, ResolveError, Trace, resolve
from boshreg.agent.sources import (
    ConfigDriveSource,
    FileSource,
    HttpSource,
    SettingsSource,
    SourceData,
    SourceUnavailable,
    UnsupportedSource,
)

__all__ = [
    "AgentSettings",
    "ConfigDriveSource",
    "FileSource",
    "HttpSource",
    "Resolution",
    "ResolveError",
    "SettingsSource",
    "SourceData",
    "SourceUnavailable",
    "Trace",
    "UnsupportedSource",
    "load_agent_config",
    "resolve",
]
