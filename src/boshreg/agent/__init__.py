"""Inside the VM: find the user data, then the settings, the way bosh-agent does. Standard library only."""

from boshreg.agent.resolver import Resolution, ResolveError, Trace, resolve
from boshreg.agent.sources import (
    ConfigDriveSource,
    FileSource,
    MetadataServiceSource,
    SettingsSource,
    SourceData,
    SourceUnavailable,
)

__all__ = [
    "ConfigDriveSource",
    "FileSource",
    "MetadataServiceSource",
    "Resolution",
    "ResolveError",
    "SettingsSource",
    "SourceData",
    "SourceUnavailable",
    "Trace",
    "resolve",
]
