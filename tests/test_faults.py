"""Faults: the registry killed with SIGKILL mid-write loses no acknowledged PUT.

The short form runs in every `make test`; `make faults` runs it longer (BOSHREG_FAULT_SECONDS).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy.engine import URL

from conftest import RegistryLauncher
from support.registry import ADMIN_PASSWORD, RegistryProcess

WRITE_SECONDS = float(os.environ.get("BOSHREG_FAULT_SECONDS", "1.5"))
WRITERS = 8
PAD = "x" * 2000  # settings of a realistic size


@dataclass
class Tally:
    sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)
    server_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_until_gone(registry: RegistryProcess, writer: int, tally: Tally, stop: threading.Event) -> None:
    with httpx.Client(base_url=registry.url, auth=("admin", ADMIN_PASSWORD), timeout=5) as http:
        n = 0
        while not stop.is_set():
            key = f"vm-{writer}-{n}"
            body = json.dumps({"agent_id": key, "n": n, "pad": PAD})
            with tally.lock:
                tally.sent += 1
            try:
                response = http.put(f"/instances/{key}/settings", content=body.encode())
            except httpx.TransportError:
                return  # the registry is gone
            with tally.lock:
                if response.status_code == 200:
                    tally.acknowledged[key] = body
                elif response.status_code >= 500:
                    tally.server_errors += 1
            n += 1


@pytest.mark.faults
def test_sigkill_mid_write_loses_no_acknowledged_put(
    database_url: URL, start_registry: RegistryLauncher, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = start_registry(database_url)
    tally, stop = Tally(), threading.Event()
    writers = [threading.Thread(target=write_until_gone, args=(registry, w, tally, stop)) for w in range(WRITERS)]
    for thread in writers:
        thread.start()
    time.sleep(WRITE_SECONDS)
    assert registry.process is not None
    os.kill(registry.process.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    registry.process.wait(timeout=10)
    stop.set()
    for thread in writers:
        thread.join(timeout=30)
    restarted = RegistryProcess(registry.workdir, registry.args, registry.port, cafile=registry.cafile)
    start_registry.started.append(restarted)
    restarted.start()
    lost = []
    with httpx.Client(base_url=restarted.url, auth=("admin", ADMIN_PASSWORD), timeout=10) as http:
        for key, body in tally.acknowledged.items():
            response = http.get(f"/instances/{key}/settings")
            if response.status_code != 200 or response.json()["settings"] != body:
                lost.append(key)
    with capsys.disabled():
        print(
            f"\n  crash ({database_url.get_backend_name()}, {WRITE_SECONDS:g} s): sent {tally.sent}, "
            f"acknowledged {len(tally.acknowledged)}, lost {len(lost)}, 5xx {tally.server_errors}"
        )
    assert len(tally.acknowledged) > 50  # the writers really wrote before the kill
    assert lost == []
    assert tally.server_errors == 0
