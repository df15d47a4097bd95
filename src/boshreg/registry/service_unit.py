"""`boshreg service-unit`: a systemd unit that runs the registry the way a service should run.

Hardened by default: its own user (``DynamicUser``, or a named one), its data in ``StateDirectory``
(``/var/lib/boshreg``, 0700) and nowhere else writable (``ProtectSystem=strict``), no new privileges, no
capabilities unless the port needs one, and a file limit high enough for the connection caps.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from boshreg.registry.config import SERVICE_DATA_DIR

FILE_LIMIT = 65_536  # the registry keeps the file limit minus 160 connections per worker (README, Connections)
_PRIVILEGED_PORTS = 1024


@dataclass(frozen=True)
class UnitOptions:
    executable: Path
    config: Path | None  # None: zero-config mode in the state directory
    user: str | None  # None: a dynamic user
    port: int | None  # only to know whether binding needs CAP_NET_BIND_SERVICE


def render_unit(options: UnitOptions) -> str:
    """The unit file's text."""
    command = [str(options.executable), "serve"]
    if options.config is not None:
        command += ["--config", str(options.config)]
    command += ["--data-dir", SERVICE_DATA_DIR]
    if options.port is not None:
        command += ["--port", str(options.port)]
    who = ["DynamicUser=yes"] if options.user is None else [f"User={options.user}", f"Group={options.user}"]
    low_port = options.port is not None and 0 < options.port < _PRIVILEGED_PORTS
    capabilities = "CAP_NET_BIND_SERVICE" if low_port else ""
    state = Path(SERVICE_DATA_DIR).name
    lines = [
        "# The boshreg registry as a systemd service; made by `boshreg service-unit`.",
        "# Install: save as /etc/systemd/system/boshreg.service, then: systemctl daemon-reload && "
        "systemctl enable --now boshreg",
        "[Unit]",
        "Description=boshreg, the BOSH registry for stemcells whose agents read their settings from one",
        "Wants=network-online.target",
        "After=network-online.target postgresql.service mariadb.service",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={shlex.join(command)}",
        *who,
        f"StateDirectory={state}",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "Restart=on-failure",
        "RestartSec=2s",
        "TimeoutStopSec=15s",
        f"LimitNOFILE={FILE_LIMIT}",
        "Environment=PYTHONUNBUFFERED=1",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={capabilities}",
        f"AmbientCapabilities={capabilities}",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
