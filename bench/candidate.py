"""make bench only: serve the registry on another stack, so that the README's comparison is measured, not recalled.

``python bench/candidate.py STACK serve --config FILE``: the same config, store, cache, audit trail and
throttle; only what carries the bytes differs. ``asyncio``: our front on asyncio's own event loop instead of
uvloop's. ``uvicorn``: the same ASGI application under uvicorn with httptools (the stack before the front;
no fast path, so every read goes through Starlette, and uvicorn's access log is off).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from boshreg.cli import main
from boshreg.registry import server
from boshreg.registry.app import RegistryApi, asgi_app
from boshreg.registry.config import RegistryConfig
from boshreg.registry.connections import ConnectionCaps
from boshreg.registry.store import SettingsStore


def _serve_on_uvicorn(
    config: RegistryConfig,
    store: SettingsStore,
    listening: server.Listening,
    caps: ConnectionCaps,
    tls: ssl.SSLContext | None,
    metrics_dir: Path,
    data_dir: Path | None,
    *,
    write_pending: bool = False,
    on_stop: Callable[[], None] | None = None,
) -> None:
    del caps, tls, metrics_dir  # uvicorn has limits of its own, the bench serves plain HTTP and scrapes nothing
    del on_stop  # uvicorn passes nothing on to the other worker; the bench stops both with the parent
    audit = server.open_audit(config, store, data_dir, write_pending=write_pending)
    api = RegistryApi(config, store, audit)
    uvicorn_config = uvicorn.Config(
        asgi_app(api), loop="asyncio", http="httptools", log_config=None, access_log=False, lifespan="off"
    )
    try:
        uvicorn.Server(uvicorn_config).run(sockets=[listening.sock])
    finally:
        audit.stop()
        api.close()
        store.close()


if __name__ == "__main__":
    stack = sys.argv.pop(1)
    if stack == "asyncio":
        server.run_loop = asyncio.run  # this process only: the front's loop becomes asyncio's
    elif stack == "uvicorn":
        server._serve_process = _serve_on_uvicorn
    elif stack != "front":
        raise SystemExit(f"candidate: unknown stack {stack!r}; use front, asyncio or uvicorn")
    sys.exit(main())
