"""make bench: the registry from this checkout under load on loopback, against nginx serving the same body.

In one run: nginx first (64 and 256 connections); on SQLite with 100,000 stored instances of 4 KiB (each
with the fleet row the CPI's PUT would have left), the hot GET (2,000 instances read at random, each with its
VM's own credential) on each candidate stack (``candidate.py``), PUT with 16 writers, the cold GET (cache off,
all 100,000); a boot storm of 10,000 VMs; the same hot and cold GETs on PostgreSQL; GET at 1k, 100k and 1M
stored (cache off) on both; the hot and cold GETs on MariaDB; nginx last.
Ratios are against the mean of the two nginx runs at the same connection count; their drift is reported.
Writes bench/results.json. Environment: BENCH_SECONDS (10), BENCH_QUICK=1 (skip 1M, storm 1,000 VMs).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import secrets
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
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from boshreg.bootstrap.credentials import instance_token
from boshreg.registry.tables import metadata, registry_fleet, registry_instances
from boshreg.testcloud.ports import free_port
from boshreg.testcloud.storm import storm

HERE = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = 3.0
STORED = 100_000
SCALES = (1_000, 100_000) if os.environ.get("BENCH_QUICK") else (1_000, 100_000, 1_000_000)
STORM_VMS = 1_000 if os.environ.get("BENCH_QUICK") else 10_000
STORM_CONCURRENCY = 256
HOT = 2_000  # instances read again and again (retries, polling, restarts): the cache's case
CONNECTIONS = (64, 256)
STACKS = ("front", "asyncio", "uvicorn")  # see candidate.py
STACK_LABELS = {
    "front": "our front, uvloop (chosen)",
    "asyncio": "our front, asyncio's loop",
    "uvicorn": "uvicorn + Starlette, same app",
}
INSTANCE_SECRET = secrets.token_hex(24)
POSTGRES = os.environ.get("BOSHREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres")
MYSQL = os.environ.get("BOSHREG_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
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


def load(url: URL, count: int) -> None:
    """``count`` instances as the CPI's PUTs through boshreg leave them: the settings, and a fleet row each."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM registry_instances"))
        conn.execute(text("DELETE FROM registry_fleet"))
    stored_at = datetime.now(UTC)
    for start in range(0, count, 10_000):
        rows = [
            {"instance_id": f"vm-{n}", "settings": settings_document(n)}
            for n in range(start, min(count, start + 10_000))
        ]
        fleet = [
            {"instance_id": row["instance_id"], "stored_at": stored_at, "changed_at": stored_at,
             "size": len(row["settings"]), "reads": 0, "refusals": 0}
            for row in rows
        ]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(registry_instances), rows)
            conn.execute(insert(registry_fleet), fleet)
    settle(engine)
    engine.dispose()


def settle(engine: Engine) -> None:
    """What a load left to do done before the load is measured: PostgreSQL's statistics and dirty buffers, and the
    kernel's dirty pages (a million rows are ~4.5 GB). Without it the scale runs right after a load shared the
    disk and the cores with its writeback and autovacuum; a registry in use serves data written long before."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            with contextlib.suppress(DBAPIError):  # a role without pg_checkpoint: its writes then stay in the run
                conn.execute(text("CHECKPOINT"))
    os.sync()


@contextmanager
def scratch_database(admin_url: str, create: str = "", drop: str = "") -> Iterator[URL]:
    """A new database on the server of ``admin_url`` (``create`` / ``drop``: the dialect's clauses), dropped after."""
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"boshreg_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}{create}"))
    try:
        yield make_url(admin_url).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}{drop}"))
        admin.dispose()


@contextmanager
def postgres_database() -> Iterator[URL]:
    with scratch_database(POSTGRES, drop=" WITH (FORCE)") as url:
        yield url


@contextmanager
def mysql_database() -> Iterator[URL]:
    with scratch_database(MYSQL, create=" CHARACTER SET utf8mb4") as url:
        yield url.set(query={"charset": "utf8mb4"})


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


def credentials(workdir: Path, count: int) -> Path:
    """A file of ``vm-N <base64 of vm-N:token>`` lines: each VM reads with its own credential, as agents do."""
    path = workdir / f"credentials-{count}.txt"
    lines = []
    for n in range(count):
        user = f"vm-{n}"
        lines.append(f"{user} {base64.b64encode(f'{user}:{instance_token(INSTANCE_SECRET, user)}'.encode()).decode()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def registry_config(workdir: Path, url: URL, port: int, **http: Any) -> Path:
    """A registry config with every feature on: access log (to a file), audit trail, throttle, per-VM credentials.

    Each run its own data directory: a stop saves there the trail events it could not write in time (a cold load
    leaves 100,000-250,000), and the next start writes them back while it serves. With one directory for the
    whole bench, each run wrote the last one's backlog (into another database, too) under its own load."""
    config = workdir / f"registry-{port}.yml"
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    config.write_text(
        yaml.safe_dump(
            {
                "loglevel": "info",
                "logfile": str(workdir / f"registry-{port}.log"),
                "data_dir": str(data_dir),
                "http": {
                    "host": "127.0.0.1",
                    "port": port,
                    "user": "admin",
                    "password": PASSWORD,
                    "instance_secret": INSTANCE_SECRET,
                    **http,
                },
                "db": url.render_as_string(hide_password=False),
            }
        )
    )
    return config


@contextmanager
def registry(workdir: Path, url: URL, stack: str = "front", **http: Any) -> Iterator[tuple[str, int]]:
    """``boshreg serve`` on ``registry_config``."""
    port = free_port()
    config = registry_config(workdir, url, port, **http)
    command = [sys.executable, str(HERE / "candidate.py"), stack, "serve", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def wrk(
    base: str, script: str, connections: int, instances: int, seconds: float = SECONDS, **env_: str
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_INSTANCES": str(instances), "BENCH_AUTH": AUTH, "BENCH_DIR": str(HERE), **env_}
    command = ["wrk", "-t2", f"-c{connections}", "--timeout", "10s", "-s", str(HERE / script), base]
    subprocess.run([*command[:1], "-d", f"{WARMUP:g}s", *command[1:]], env=env, capture_output=True, check=True)
    output = subprocess.run(
        [*command[:1], "-d", f"{seconds:g}s", *command[1:]], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    requests, duration_us, p50, p99, p999, errors, non2xx = (int(x) for x in line.split()[1:])
    result = {
        "requests_per_s": round(requests / (duration_us / 1e6)),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "p999_ms": p999 / 1000,
        "socket_errors": errors,
        "non_2xx": non2xx,
        "connections": connections,
    }
    if non2xx or errors:
        print(f"bench: {non2xx} non-2xx answers and {errors} socket errors at {base} ({script})", flush=True)
    return result


def reads(base: str, connections: int, credentials_file: Path, seconds: float = SECONDS) -> dict[str, Any]:
    """Random reads, each with the VM's own credential."""
    return wrk(base, "get_own.lua", connections, 0, seconds, BENCH_CREDENTIALS=str(credentials_file))


def trail_behind(base: str) -> dict[str, int]:
    """The audit trail right after a load: events still waiting to be written and events dropped, all workers
    (from /metrics, whose worker snapshots are at most a second old). Whether the trail kept up with the reads."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Basic {AUTH}"}, timeout=10).text
    found = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("boshreg_audit_"))
    return {
        "waiting": int(float(found.get("boshreg_audit_queue_depth", "0"))),
        "dropped": int(float(found.get("boshreg_audit_dropped_events_total", "0"))),
    }


@contextmanager
def nginx_server(workdir: Path) -> Iterator[str]:
    root = workdir / "nginx"
    (root / "html").mkdir(parents=True, mode=0o755, exist_ok=True)
    (root / "html" / "settings.json").write_text(json.dumps({"status": "ok", "settings": settings_document(1)}))
    port = free_port()
    conf = root / "nginx.conf"
    temp = " ".join(f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""worker_processes 2; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; {temp}
  server {{ listen 127.0.0.1:{port}; root {root}/html;
    location / {{ default_type application/json; try_files /settings.json =404; }} }} }}
""")
    subprocess.run(["/usr/sbin/nginx", "-c", str(conf)], check=True)
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["/usr/sbin/nginx", "-c", str(conf), "-s", "stop"], check=False)


def nginx(workdir: Path) -> dict[str, Any]:
    """nginx serving the same body as a static file, at both connection counts."""
    with nginx_server(workdir) as base:
        return {f"c{c}": wrk(base, "get.lua", c, STORED) for c in CONNECTIONS}


def main() -> int:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total // 2**30} GiB, Python {platform.python_version()}",
        "load": f"wrk -t2, {WARMUP:g} s warm-up, {SECONDS:g} s measured; 4 KiB settings; two registry workers; "
        "every feature on (access log to a file, audit trail, throttle, per-VM credentials)",
    }
    with tempfile.TemporaryDirectory(prefix="boshreg-bench-") as temporary:
        workdir = Path(temporary)
        workdir.chmod(0o755)  # nginx's workers (not root) must reach the file they serve
        print("nginx, static 4 KiB file (first) ...", flush=True)
        results["nginx_first"] = nginx(workdir)
        hot, cold = credentials(workdir, HOT), credentials(workdir, STORED)
        sqlite = URL.create("sqlite", database=str(workdir / "bench.db"))
        print(f"sqlite: loading {STORED:,} instances ...", flush=True)
        load(sqlite, STORED)
        for stack in STACKS:
            with registry(workdir, sqlite, stack) as (base, pid), PeakRss(pid) as rss:
                print(f"sqlite, {stack}: hot GET ({HOT:,} instances) ...", flush=True)
                results[f"hot_sqlite_{stack}"] = {f"c{c}": reads(base, c, hot) for c in CONNECTIONS}
                if stack == "front":
                    print("sqlite: PUT, 16 writers ...", flush=True)
                    results["put_sqlite"] = wrk(base, "put.lua", 16, STORED)
            results[f"hot_sqlite_{stack}"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
        with registry(workdir, sqlite, cache_bytes=0) as (base, pid), PeakRss(pid) as rss:
            print(f"sqlite: cold GET ({STORED:,} instances, cache off) ...", flush=True)
            results["cold_sqlite"] = {"c256": reads(base, 256, cold), "trail": trail_behind(base)}
        # Before PostgreSQL, so that no checkpoint of its million-row load can run into the storm.
        print(f"boot storm: {STORM_VMS:,} VMs, {STORM_CONCURRENCY} at a time ...", flush=True)
        report = storm(workdir / "storm", vms=STORM_VMS, concurrency=STORM_CONCURRENCY, say=lambda _line: None)
        if not report.ok:
            raise SystemExit(f"bench: the boot storm failed:\n{report.to_text()}")
        results["boot_storm"] = {key: value for key, value in report.to_json().items() if key != "errors"}
        with postgres_database() as pg_url:
            print(f"postgres: loading {STORED:,} instances ...", flush=True)
            load(pg_url, STORED)
            with registry(workdir, pg_url) as (base, pid), PeakRss(pid) as rss:
                print("postgres: hot GET ...", flush=True)
                results["hot_postgres"] = {f"c{c}": reads(base, c, hot) for c in CONNECTIONS}
                print("postgres: PUT, 16 writers ...", flush=True)
                results["put_postgres"] = wrk(base, "put.lua", 16, STORED)
            results["hot_postgres"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
            with registry(workdir, pg_url, cache_bytes=0) as (base, _pid):
                print("postgres: cold GET (cache off) ...", flush=True)
                results["cold_postgres"] = {"c256": reads(base, 256, cold), "trail": trail_behind(base)}
            for count in SCALES:
                print(f"postgres scaling: {count:,} instances (cache off) ...", flush=True)
                load(pg_url, count)
                with registry(workdir, pg_url, cache_bytes=0) as (base, pid), PeakRss(pid) as rss:
                    results[f"scale_postgres_{count}"] = wrk(base, "get.lua", 256, count, seconds=min(SECONDS, 5))
                    results[f"scale_postgres_{count}"]["trail"] = trail_behind(base)
                results[f"scale_postgres_{count}"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
        with mysql_database() as mysql_url:
            print(f"mariadb: loading {STORED:,} instances ...", flush=True)
            load(mysql_url, STORED)
            with registry(workdir, mysql_url) as (base, pid), PeakRss(pid) as rss:
                print("mariadb: hot GET ...", flush=True)
                results["hot_mysql"] = {f"c{c}": reads(base, c, hot) for c in CONNECTIONS}
            results["hot_mysql"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
            with registry(workdir, mysql_url, cache_bytes=0) as (base, _pid):
                print("mariadb: cold GET (cache off) ...", flush=True)
                results["cold_mysql"] = {"c256": reads(base, 256, cold), "trail": trail_behind(base)}
        for count in SCALES:
            url = URL.create("sqlite", database=str(workdir / f"scale-{count}.db"))
            print(f"scaling: {count:,} instances (cache off) ...", flush=True)
            load(url, count)
            with registry(workdir, url, cache_bytes=0) as (base, pid), PeakRss(pid) as rss:
                results[f"scale_{count}"] = wrk(base, "get.lua", 256, count, seconds=min(SECONDS, 5))
                results[f"scale_{count}"]["trail"] = trail_behind(base)
            results[f"scale_{count}"]["peak_rss_mib"] = round(rss.peak / 2**20, 1)
            Path(url.database or "").unlink(missing_ok=True)
        print("nginx, static 4 KiB file (last) ...", flush=True)
        results["nginx_last"] = nginx(workdir)
    add_ratios(results)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def add_ratios(results: dict[str, Any]) -> None:
    """Each GET figure against nginx at the same connection count (the mean of the runs before and after)."""
    nginx_rate = {}
    for c in CONNECTIONS:
        first = results["nginx_first"][f"c{c}"]["requests_per_s"]
        last = results["nginx_last"][f"c{c}"]["requests_per_s"]
        nginx_rate[f"c{c}"] = (first + last) / 2
        results.setdefault("nginx_drift", {})[f"c{c}"] = round(last / first - 1, 4)
    for key, value in results.items():
        if key.startswith(("hot_", "cold_")):
            for conns, figures in value.items():
                if conns in nginx_rate:
                    figures["ratio_to_nginx"] = round(figures["requests_per_s"] / nginx_rate[conns], 4)
    for database, prefix in (("sqlite", "scale_"), ("postgres", "scale_postgres_")):
        rates = [results[f"{prefix}{n}"]["requests_per_s"] for n in SCALES]
        # How far the slowest size falls below the fastest: "flat within 10%" means below 0.10.
        results.setdefault("scale_spread", {})[database] = round(1 - min(rates) / max(rates), 4)


def table(results: dict[str, Any]) -> str:
    rows = [("what", "conns", "req/s", "x nginx", "p50 ms", "p99 ms", "p99.9 ms", "errors", "peak RSS MiB")]

    def row(label: str, figures: dict[str, Any], rss: Any = "") -> None:
        ratio = figures.get("ratio_to_nginx")
        rows.append(
            (
                label,
                str(figures["connections"]),
                f"{figures['requests_per_s']:,}",
                f"{ratio:.2f}" if ratio is not None else "",
                f"{figures['p50_ms']:.2f}",
                f"{figures['p99_ms']:.2f}",
                f"{figures['p999_ms']:.2f}",
                str(figures["socket_errors"] + figures["non_2xx"]),
                str(rss),
            )
        )

    labels = {
        "nginx_first": "nginx, static file (first)",
        **{f"hot_sqlite_{stack}": f"hot GET, SQLite, {STACK_LABELS[stack]}" for stack in STACKS},
        "cold_sqlite": f"cold GET, SQLite ({STORED:,}, cache off)",
        "hot_postgres": "hot GET, PostgreSQL",
        "cold_postgres": f"cold GET, PostgreSQL ({STORED:,}, cache off)",
        "hot_mysql": "hot GET, MariaDB",
        "cold_mysql": f"cold GET, MariaDB ({STORED:,}, cache off)",
        "nginx_last": "nginx, static file (last)",
    }
    for key, label in labels.items():
        group = results[key]
        for conns in (f"c{c}" for c in CONNECTIONS):
            if conns in group:
                row(label, group[conns], group.get("peak_rss_mib", ""))
    for key, label in (("put_sqlite", "PUT x16, SQLite"), ("put_postgres", "PUT x16, PostgreSQL")):
        row(label, results[key])
    for n in SCALES:
        row(f"GET, {n:,} stored (SQLite, cache off)", results[f"scale_{n}"], results[f"scale_{n}"]["peak_rss_mib"])
    for n in SCALES:
        scale = results[f"scale_postgres_{n}"]
        row(f"GET, {n:,} stored (PostgreSQL, cache off)", scale, scale["peak_rss_mib"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)) for r in rows]
    boot = results["boot_storm"]
    storm_line = (
        f"boot storm: {boot['vms']:,} VMs, {boot['concurrency']} at a time ({boot['agents']} agents): "
        f"all resolved in {boot['seconds']:.1f} s "
        f"(CPI stored them in {boot['cpi_seconds']:.1f} s); per VM p50 {boot['per_vm_ms']['p50']:.1f} ms, "
        f"p99 {boot['per_vm_ms']['p99']:.1f} ms; registry GET p99 {boot['registry_ms']['p99']:.1f} ms; the "
        f"registry's own CPU {boot['registry_cpu_boot']:.1f} s during the boots ({boot['registry_cpu_cpi']:.1f} s "
        "during the CPI's PUTs)"
    )
    drift = ", ".join(f"{k} {v:+.1%}" for k, v in results["nginx_drift"].items())
    spread = ", ".join(f"{k} {v:.1%}" for k, v in results["scale_spread"].items())
    trail = "; ".join(
        f"{name} {results[key]['trail']['waiting']:,} waiting, {results[key]['trail']['dropped']:,} dropped"
        for key, name in (("cold_sqlite", "SQLite"), ("cold_postgres", "PostgreSQL"), ("cold_mysql", "MariaDB"))
    )
    scale_trail = "; ".join(
        f"{name} " + ", ".join(f"{results[f'{prefix}{n}']['trail']['dropped']:,}" for n in SCALES)
        for prefix, name in (("scale_", "SQLite"), ("scale_postgres_", "PostgreSQL"))
    )
    return "\n".join(
        [f"{results['date']}  {results['machine']}", results["load"], f"nginx drift, last vs first: {drift}", "",
         *lines, f"slowest size below the fastest, {', '.join(f'{n:,}' for n in SCALES)} stored: {spread}",
         f"audit trail right after each cold run (events): {trail}",
         f"audit trail events dropped in the scale runs ({', '.join(f'{n:,}' for n in SCALES)}): {scale_trail}", "",
         storm_line]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
