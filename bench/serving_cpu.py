"""The serving thread's CPU per settings read, in process, with no network and no load generator.

Why beside ``make bench``'s wrk runs: on a 2-core VM wrk, the kernel's loopback and the registry share the cores,
so a wrk figure cannot say whose microseconds a change saved. This one is one process's front, app, auth, store,
cache, trail and metrics, driven by a transport that only counts bytes: 128 connections, one request each per
turn of the event loop, as under wrk at 256 connections over two workers. It leaves out the kernel's share and
the trail writer's thread (which runs, below the serving thread's priority). Measured on one VM within an hour
(2026-12-07): cold 69-88 µs a read, hot 12.5-21.6, so it still drifts with the VM: compare changes in
alternating runs, or profile it (``py-spy record -- python bench/serving_cpu.py``) for a profile without wrk.

``python bench/serving_cpu.py`` loads 100,000 instances into a scratch SQLite database (as ``make bench`` does)
and prints JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop
from run import HOT, INSTANCE_SECRET, STORED, load, registry_config
from sqlalchemy.engine import URL

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.app import RegistryApi, asgi_app
from boshreg.registry.config import load_config
from boshreg.registry.connections import ConnectionCaps, OpenConnections
from boshreg.registry.engine import build_engine
from boshreg.registry.front import Connection, Front
from boshreg.registry.metrics import ProcessMetrics
from boshreg.registry.server import front_limits, open_audit, settle_heap
from boshreg.registry.store import SettingsStore

CONNECTIONS = 128
READS = 50_000


class CountingTransport:
    """What the front needs of a transport: it takes the answers and counts their bytes."""

    def __init__(self) -> None:
        self.sent = 0
        self.ok = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 25777)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self.ok += data.startswith(b"HTTP/1.1 200 ")

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def request(n: int) -> bytes:
    """VM n's read, with its own credential."""
    user = f"vm-{n}"
    auth = base64.b64encode(f"{user}:{instance_token(INSTANCE_SECRET, user)}".encode()).decode()
    return f"GET /instances/{user}/settings HTTP/1.1\r\nHost: registry\r\nAuthorization: Basic {auth}\r\n\r\n".encode()


def measure(database: Path, stored: int, hot: int, *, cold: bool) -> dict[str, float]:
    """µs of the serving thread's CPU per read: ``cold`` each of ``READS`` VMs once, cache off; else ``READS``
    reads among ``hot`` VMs, cache on. Every feature on, as in the wrk runs (``run.registry_config``)."""
    with tempfile.TemporaryDirectory(prefix="boshreg-serving-cpu-") as temporary:
        return _measure(Path(temporary), database, stored, hot, cold=cold)


def _measure(workdir: Path, database: Path, stored: int, hot: int, *, cold: bool) -> dict[str, float]:
    url = URL.create("sqlite", database=str(database))
    config_file = registry_config(workdir, url, 25777, **({"cache_bytes": 0} if cold else {}))
    config = load_config(config_file)
    store = SettingsStore(build_engine(config.db))
    audit = open_audit(config, store)
    metrics = ProcessMetrics(workdir).start()
    api = RegistryApi(config, store, audit, metrics)
    ids = random.sample(range(stored), READS) if cold else [random.randrange(hot) for _ in range(READS)]
    requests = [request(n) for n in ids]
    warm = [request(random.randrange(stored if cold else hot)) for _ in range(2_000)]
    settle_heap()  # as a worker does before it serves: start-up's objects out of the collector's full passes

    async def run() -> dict[str, float]:
        caps = ConnectionCaps.for_limit(65_536, 10_000, 10_000)
        front = Front(
            asgi_app(api), api.fast_read, front_limits(config), OpenConnections(caps), observe=metrics.answered
        )
        transports = [CountingTransport() for _ in range(CONNECTIONS)]
        connections = [Connection(front) for _ in transports]
        for connection, transport in zip(connections, transports, strict=True):
            connection.connection_made(cast(asyncio.BaseTransport, transport))

        async def drive(batch: list[bytes]) -> None:
            for start in range(0, len(batch), CONNECTIONS):
                for connection, data in zip(connections, batch[start : start + CONNECTIONS], strict=False):
                    connection.data_received(data)
                await asyncio.sleep(0)  # a turn of the loop: the front logs and counts the turn's answers

        await drive(warm)
        await asyncio.sleep(0.6)  # the writer's turn for the warm-up's reads
        sent, ok = sum(t.sent for t in transports), sum(t.ok for t in transports)
        started = time.thread_time()
        await drive(requests)
        cpu = time.thread_time() - started
        answered = (sum(t.sent for t in transports) - sent) / READS
        if sum(t.ok for t in transports) - ok != READS:
            raise SystemExit(f"serving_cpu: not every read was answered 200 ({database})")
        return {"us_per_read": round(cpu / READS * 1e6, 1), "bytes_per_answer": round(answered)}

    try:
        return uvloop.run(run())
    finally:
        audit.stop()
        metrics.stop()
        api.close()
        store.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="boshreg-serving-cpu-") as temporary:
        database = Path(temporary) / "bench.db"
        load(URL.create("sqlite", database=str(database)), STORED)
        figures = {kind: measure(database, STORED, HOT, cold=kind == "cold") for kind in ("cold", "hot")}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
