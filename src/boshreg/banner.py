"""What `boshreg serve` prints once it listens: presentation, kept out of the server.

Where it serves, where its data lives, and the block an operator pastes into a manifest (with the
generated password in zero-config mode: that is the point of printing it).
"""

from __future__ import annotations

import ipaddress

from boshreg.bootstrap.endpoint import Endpoint
from boshreg.registry.server import worker_count
from boshreg.registry.startup import OpenRegistry


def banner(registry: OpenRegistry) -> str:
    """The lines ``serve`` prints at start."""
    config, listening, password_file = registry.config, registry.listening, registry.password_file
    host = config.http.host
    shown_host = f"[{host}]" if ":" in host else host
    endpoint = Endpoint(
        scheme="https" if config.http.tls else "http",
        host=listening.advertised_host,
        port=listening.port,
        user=config.http.user,
        password=config.http.password,
    )
    lines = [
        f"boshreg registry listening on {endpoint.scheme}://{shown_host}:{listening.port}",
        f"  database: {registry.store.database}",
        f"  workers: {worker_count(config)}",
    ]
    if password_file is None:
        lines.append(f"  endpoint for VMs: {endpoint.redacted()} (password: http.password in the config)")
    else:
        lines += [
            f"  admin password: kept in {password_file}",
            "",
            "Registry block for micro_bosh.yml (cloud.properties) or your CPI config:",
            "",
            "registry:",
            f"  endpoint: {endpoint.url()}",
            f"  user: {config.http.user}",
            f"  password: {config.http.password}",
        ]
    if _is_loopback(listening.advertised_host):
        lines += [
            "",
            f"warning: VMs cannot reach {listening.advertised_host}; serve on an address they "
            "can reach (--host, http.host)",
        ]
    return "\n".join(lines)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"
