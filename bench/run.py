"""make bench: the registry from this checkout under load on loopback, against nginx serving the same body.

Figures: GET requests/s and p50/p99/p99.9 latency (wrk, 2 threads, 256 connections, after a warm-up) on
SQLite and PostgreSQL with 100,000 stored instances of 4 KiB; the same load against nginx and the ratio;
GET throughput at 1k, 100k and 1M stored instances (SQLite); PUT throughput with 16 writers; the
registry's peak RSS; a boot storm of 10,000 VMs (``boshreg testcloud storm``). Writes bench/results.json.
Environment: BENCH_SECONDS (10), BENCH_QUICK=1 (skip 1M, storm 1,000 VMs).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import URL, make_url

from boshreg.registry.tables import metadata, registry_instances
from boshreg.testcloud.storm import storm

HERE = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = 3.0
STORED = 100_000
SCALES = (1_000, 100_000) if os.environ.get("BENCH_QUICK") else (1_000, 100_000, 1_000_000)
STORM_VMS = 1_000 if os.environ.get("BENCH_QUICK") else 10_000
STORM_CONCURRENCY = 256
POSTGRES = os.environ.get("BOSHREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres")
PASSWORD = secrets.token_hex(12)
AUTH = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def settings_document(n: int) -> str:
    """A realistic agent settings document of about 4 KiB."""
    document = {
        "agent_id": f"agent-{n}",
        "vm": {"name": f"vm-{n}"},
        "mbus": f"nats://nats:secret-{n}@10.0.0.6:4222",
        "blobstore": {"provider": "dav", "options": {"endpoint": "http://10.0.0.6:25250", "user": "agent"}},
        "networks": {
            "default": {
                "type": "manual",
                "ip": f"10.0.{n // 250 % 250}.{n % 250}",
                "netmask": "255.255.0.0",
                "gateway": "10.0.0.1",
                "dns": ["10.0.0.2"],
                "default": ["dns", "gateway"],
            }
        },
        "disks": {"system": "/dev/vda", "ephemeral": "/dev/vdb", "persistent": {}},
        "ntp": ["0.pool.ntp.org"],
    }
    text_ = json.dumps(document)
    document["env"] = {"bosh": {"password": "*", "keep_root_password": False, "pad": "e" * (4096 - len(text_) - 80)}}
    return json.dumps(document)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(url: URL, count: int) -> None:
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM registry_instances"))
    for start in range(0, count, 10_000):
        rows = [
            {"instance_id": f"vm-{n}", "settings": settings_document(n)}
            for n in range(start, min(count, start + 10_000))
        ]
        with engine.begin() as conn:
            conn.execute(insert(registry_instances), rows)
    engine.dispose()


@contextmanager
def postgres_database() -> Iterator[URL]:
    admin = create_engine(make_url(POSTGRES), isolation_level="AUTOCOMMIT")
    name = f"boshreg_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


class PeakRss:
    """Samples a process tree's resident memory every 50 ms while the load runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@contextmanager
def registry(workdir: Path, url: URL) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = workdir / f"registry-{port}.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "loglevel": "info",
                "logfile": str(workdir / f"registry-{port}.log"),
                "http": {
                    "host": "127.0.0.1",
                    "port": port,
                    "user": "admin",
                    "password": PASSWORD,
                    "auth_throttle": {"max_failures": 100_000},
                },
                "db": url.render_as_string(hide_password=False),
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "boshreg", "serve", "--config", str(config), "--data-dir", str(workdir / "data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        raise SystemExit("bench: the registry did not start")
    try:
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def wrk(base: str, script: str, connections: int, instances: int, seconds: float = SECONDS) -> dict[str, Any]:
    env = {**os.environ, "BENCH_INSTANCES": str(instances), "BENCH_AUTH": AUTH, "BENCH_DIR": str(HERE)}
    command = ["wrk", "-t2", f"-c{connections}", "--timeout", "10s", "-s", str(HERE / script), base]
    subprocess.run([*command[:1], "-d", f"{WARMUP:g}s", *command[1:]], env=env, capture_output=True, check=True)
    output = subprocess.run(
        [*command[:1], "-d", f"{seconds:g}s", *command[1:]], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    requests, duration_us, p50, p99, p999, errors, non2xx = (int(x) for x in line.split()[1:])
    return {
        "requests_per_s": round(requests / (duration_us / 1e6)),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "p999_ms": p999 / 1000,
        "socket_errors": errors,
        "non_2xx": non2xx,
    }


def nginx(workdir: Path) -> dict[str, Any]:
    root = workdir / "nginx"
    (root / "html").mkdir(parents=True, mode=0o755)
    (root / "html" / "settings.json").write_text(json.dumps({"status": "ok", "settings": settings_document(1)}))
    port = free_port()
    conf = root / "nginx.conf"
    temp = " ".join(f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""worker_processes auto; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; {temp}
  server {{ listen 127.0.0.1:{port}; root {root}/html;
    location / {{ default_type application/json; try_files /settings.json =404; }} }} }}
""")
    subprocess.run(["/usr/sbin/nginx", "-c", str(conf)], check=True)
    try:
        time.sleep(0.5)
        result = wrk(f"http://127.0.0.1:{port}", "get.lua", 256, STORED)
        if result["non_2xx"]:
            raise SystemExit(f"bench: nginx answered {result['non_2xx']} requests with errors; see {root}/error.log")
        return result
    finally:
        subprocess.run(["/usr/sbin/nginx", "-c", str(conf), "-s", "stop"], check=False)


def main() -> int:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total // 2**30} GiB, Python {platform.python_version()}",
        "load": f"wrk -t2 -c256, {WARMUP:g} s warm-up, {SECONDS:g} s measured; 4 KiB settings",
    }
    with tempfile.TemporaryDirectory(prefix="boshreg-bench-") as temporary:
        workdir = Path(temporary)
        workdir.chmod(0o755)  # nginx's workers (not root) must reach the file they serve
        print("nginx, static 4 KiB file ...", flush=True)
        results["nginx"] = nginx(workdir)
        backends = {"sqlite": URL.create("sqlite", database=str(workdir / "bench.db"))}
        with postgres_database() as pg_url:
            backends["postgres"] = pg_url
            for name, url in backends.items():
                print(f"{name}: loading {STORED:,} instances ...", flush=True)
                load(url, STORED)
                with registry(workdir, url) as (base, pid), PeakRss(pid) as rss:
                    print(f"{name}: GET ...", flush=True)
                    results[f"get_{name}"] = wrk(base, "get.lua", 256, STORED)
                    print(f"{name}: PUT, 16 writers ...", flush=True)
                    results[f"put_{name}"] = wrk(base, "put.lua", 16, STORED)
                results[f"get_{name}"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
        for count in SCALES:
            url = URL.create("sqlite", database=str(workdir / f"scale-{count}.db"))
            print(f"scaling: {count:,} instances ...", flush=True)
            load(url, count)
            with registry(workdir, url) as (base, _pid):
                results[f"scale_{count}"] = wrk(base, "get.lua", 256, count, seconds=min(SECONDS, 5))
            Path(url.database or "").unlink(missing_ok=True)
        print(f"boot storm: {STORM_VMS:,} VMs, {STORM_CONCURRENCY} at a time ...", flush=True)
        report = storm(workdir / "storm", vms=STORM_VMS, concurrency=STORM_CONCURRENCY, say=lambda _line: None)
        if not report.ok:
            raise SystemExit(f"bench: the boot storm failed:\n{report.to_text()}")
        results["boot_storm"] = {key: value for key, value in report.to_json().items() if key != "errors"}
    for name in ("sqlite", "postgres"):
        results[f"get_{name}"]["ratio_to_nginx"] = round(
            results[f"get_{name}"]["requests_per_s"] / results["nginx"]["requests_per_s"], 4
        )
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    rows = [("what", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "notes")]
    for key, label in (
        ("nginx", "nginx, static file"),
        ("get_sqlite", "GET, SQLite"),
        ("get_postgres", "GET, PostgreSQL"),
        ("put_sqlite", "PUT x16, SQLite"),
        ("put_postgres", "PUT x16, PostgreSQL"),
        *((f"scale_{n}", f"GET, {n:,} stored") for n in SCALES),
    ):
        r = results[key]
        notes = []
        if "ratio_to_nginx" in r:
            notes.append(f"{r['ratio_to_nginx']:.1%} of nginx")
        if "peak_rss_mib" in r:
            notes.append(f"peak RSS {r['peak_rss_mib']} MiB")
        rows.append(
            (
                label,
                f"{r['requests_per_s']:,}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['p999_ms']:.2f}",
                str(r["socket_errors"] + r["non_2xx"]),
                ", ".join(notes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    boot = results["boot_storm"]
    storm_line = (
        f"boot storm: {boot['vms']:,} VMs, {boot['concurrency']} at a time: all resolved in {boot['seconds']:.1f} s "
        f"(CPI stored them in {boot['cpi_seconds']:.1f} s); per VM p50 {boot['per_vm_ms']['p50']:.1f} ms, "
        f"p99 {boot['per_vm_ms']['p99']:.1f} ms; registry GET p99 {boot['registry_ms']['p99']:.1f} ms"
    )
    return "\n".join([f"{results['date']}  {results['machine']}", results["load"], "", *lines, "", storm_line])


if __name__ == "__main__":
    sys.exit(main())
