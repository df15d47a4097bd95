"""Faults: SIGKILL mid-write loses no acknowledged PUT; replicas read their writes; outages give 503s only.

The short form runs in every `make test`; `make faults` runs it longer (BOSHREG_FAULT_SECONDS).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

from boshreg.registry.audit import query_events
from conftest import RegistryLauncher
from support.pgserver import PgServer
from support.proxy import TcpProxy
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


@pytest.mark.faults
def test_two_replicas_on_one_database_read_their_writes(database_url: URL, start_registry: RegistryLauncher) -> None:
    first, second = start_registry(database_url), start_registry(database_url)
    auth = ("admin", ADMIN_PASSWORD)
    with httpx.Client(auth=auth, timeout=10) as http:
        for n in range(200):
            body = json.dumps({"agent_id": f"a-{n}", "version": n})
            writer, reader = (first, second) if n % 2 else (second, first)
            assert http.put(f"{writer.url}/instances/vm-rw/settings", content=body.encode()).status_code == 200
            assert http.get(f"{reader.url}/instances/vm-rw/settings").json()["settings"] == body
        assert http.delete(f"{second.url}/instances/vm-rw/settings").status_code == 200
        assert http.get(f"{first.url}/instances/vm-rw/settings").status_code == 404


@dataclass
class Outage:
    """What readers saw while the database went away: (start time, status, seconds taken) per request."""

    statuses: list[tuple[float, int, float]]
    back: float  # when the database answered again

    def served_again(self) -> float:
        """Seconds from the database's return to the first 200 of a request sent after it."""
        recovered = [when for when, status, _ in self.statuses if when > self.back and status == 200]
        return min(recovered) - self.back if recovered else float("inf")

    def summary(self, label: str) -> str:
        codes = [status for _, status, _ in self.statuses]
        return (
            f"\n  {label}: requests {len(codes)}, 200 {codes.count(200)}, 503 {codes.count(503)}, "
            f"slowest {max(taken for _, _, taken in self.statuses):.2f} s, "
            f"served again {self.served_again():.2f} s after the database returned"
        )


def outage_under_read_load(
    registry: RegistryProcess, take_away: Callable[[], None], bring_back: Callable[[], None]
) -> Outage:
    """Four readers GET one VM's settings while the database goes away for a while and comes back."""
    httpx.put(
        f"{registry.url}/instances/vm-load/settings", content=b'{"agent_id": "a"}', auth=("admin", ADMIN_PASSWORD)
    )
    statuses: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(auth=("admin", ADMIN_PASSWORD), timeout=20) as http:
            while not stop.is_set():
                started = time.monotonic()
                response = http.get(f"{registry.url}/instances/vm-load/settings")
                assert response.headers["content-type"] == "application/json"
                statuses.append((started, response.status_code, time.monotonic() - started))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        time.sleep(1.0)
        take_away()
        time.sleep(max(2.0, WRITE_SECONDS))
        bring_back()
        back = time.monotonic()
        time.sleep(5.0)
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=30)
    return Outage(statuses, back)


def assert_only_503_then_served_again(outage: Outage, request_timeout: float) -> None:
    codes = {status for _, status, _ in outage.statuses}
    assert codes <= {200, 503}
    assert 503 in codes
    assert max(taken for _, _, taken in outage.statuses) < request_timeout + 1  # no hung request
    served_again = outage.served_again()
    assert served_again < 5
    assert all(status == 200 for when, status, _ in outage.statuses if when > outage.back + served_again + 0.5)


@pytest.mark.faults
def test_database_connection_cut_under_read_load(
    server_database_url: URL, start_registry: RegistryLauncher, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = TcpProxy(server_database_url.host or "127.0.0.1", server_database_url.port or 0).start()
    try:
        registry = start_registry(server_database_url.set(host="127.0.0.1", port=proxy.port), request_timeout=3)
        outage = outage_under_read_load(registry, proxy.cut, proxy.restore)
    finally:
        proxy.close()
    with capsys.disabled():
        print(outage.summary(f"connection cut ({server_database_url.get_backend_name()})"))
    assert_only_503_then_served_again(outage, request_timeout=3)


@pytest.mark.faults
@pytest.mark.postgres
def test_postgres_stopped_and_started_under_read_load(
    own_postgres: PgServer, start_registry: RegistryLauncher, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = start_registry(own_postgres.url, request_timeout=3)
    outage = outage_under_read_load(registry, own_postgres.stop, own_postgres.start)
    with capsys.disabled():
        print(outage.summary("PostgreSQL stopped (pg_ctl stop -m fast), then started"))
    assert_only_503_then_served_again(outage, request_timeout=3)
    assert "Traceback" not in registry.stderr()


@pytest.mark.faults
def test_worker_processes_share_the_port_and_die_with_the_parent(start_registry: RegistryLauncher) -> None:
    registry = start_registry(workers=2)
    with httpx.Client(
        auth=("admin", ADMIN_PASSWORD), timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    ) as http:  # a new connection each time
        http.put(f"{registry.url}/instances/vm-w/settings", content=b'{"agent_id": "w"}')
        assert all(http.get(f"{registry.url}/instances/vm-w/settings").status_code == 200 for _ in range(100))
    assert registry.process is not None
    parent = psutil.Process(registry.process.pid)
    workers = parent.children()
    assert len(workers) == 1
    assert len(set(re.findall(r"serving in process (\d+)", registry.stderr()))) == 2
    os.kill(parent.pid, signal.SIGKILL)
    registry.process.wait(timeout=10)
    _gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", registry.port)) != 0  # nobody holds the port any more


@pytest.mark.faults
@pytest.mark.parametrize("to_every_process", [False, True], ids=["to-the-parent", "to-every-process"])
def test_sigterm_stops_every_worker_gracefully_with_its_audit_trail_written(
    start_registry: RegistryLauncher, tmp_path: Path, to_every_process: bool
) -> None:
    """As an operator stops it: SIGTERM to the parent, or to every process at once as systemd does."""
    registry = start_registry(workers=2)
    with httpx.Client(
        auth=("admin", ADMIN_PASSWORD), timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    ) as http:  # a new connection each time, so both workers answer some
        http.put(f"{registry.url}/instances/vm-t/settings", content=b'{"agent_id": "t"}')
        assert all(http.get(f"{registry.url}/instances/vm-t/settings").status_code == 200 for _ in range(200))
    assert registry.process is not None
    workers = psutil.Process(registry.process.pid).children() if to_every_process else []
    registry.process.terminate()  # at once: events are still queued for the background writer
    for worker in workers:  # which then gets the parent's SIGTERM too, during its clean-up
        worker.terminate()
    assert registry.process.wait(timeout=20) == 0
    assert "Traceback" not in registry.stderr()
    assert len(set(re.findall(r"stopped serving in process (\d+)", registry.stderr()))) == 2
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    events = query_events(engine, instance_id="vm-t")
    engine.dispose()
    # Reads are recorded as counts per (instance, address, credential) and flush; the counts add up.
    assert (sum(e.count for e in events if e.action == "read"), sum(e.action == "write" for e in events)) == (200, 1)
