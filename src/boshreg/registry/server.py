"""Starting the registry: bind the socket, open the store, hand both to uvicorn.

The socket is bound before anything is announced, so a port in use is one clear error and the printed
endpoint is the one really being served (also when port 0 asked for any free port).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import uvicorn

from boshreg.bootstrap.endpoint import Endpoint
from boshreg.errors import BoshregError
from boshreg.registry.app import create_app
from boshreg.registry.audit import AuditLog
from boshreg.registry.config import RegistryConfig
from boshreg.registry.engine import build_async_engine, build_engine
from boshreg.registry.store import SettingsStore, StoreUnavailable

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # files this process creates: readable by its owner only

_WILDCARDS = {"0.0.0.0", "::", ""}  # noqa: S104 - names of "all interfaces", compared, not bound


class ServeError(BoshregError):
    """The registry cannot start; the message names the cause and the setting to change."""


@dataclass(frozen=True)
class Listening:
    """A bound listening socket and the address VMs should use to reach it."""

    sock: socket.socket
    port: int
    advertised_host: str


def bind(host: str, port: int) -> Listening:
    """Bind the registry's listening socket, or raise ServeError naming http.host / http.port."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
        # they are TCP, and with Nagle on, each response's body waited for the client's delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another http.port (--port) or http.host (--host)"
        ) from None
    sock.setblocking(False)
    return Listening(sock=sock, port=sock.getsockname()[1], advertised_host=advertised_host(host))


def advertised_host(bound_host: str) -> str:
    """The address to put in VMs' endpoints: the bound one, or this host's first non-loopback IPv4."""
    if bound_host not in _WILDCARDS:
        return bound_host
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.IPv4Address(address.address)
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return str(ip)
    return "127.0.0.1"


def open_store(config: RegistryConfig) -> SettingsStore:
    """The settings store; a database that is down now only delays readiness, it does not stop start-up.

    Every VM's settings carry message-bus and blobstore credentials: the files this process creates
    (an SQLite database, its -wal and -shm) are its owner's alone, and looser existing ones are named.
    """
    os.umask(PRIVATE_UMASK)
    engine = build_engine(config.db)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        warn_if_shared(Path(str(engine.url.database)))
    store = SettingsStore(engine, build_async_engine(config.db))
    try:
        store.ensure_schema()
    except StoreUnavailable as exc:
        log.warning("%s; answering 503 until it is reachable", exc)
    return store


def warn_if_shared(database: Path) -> None:
    """Log, with the command that fixes it, a database file or directory that others can read."""
    for path, private in (
        (database.parent, 0o700),
        *((database.with_name(database.name + s), 0o600) for s in ("", "-wal", "-shm")),
    ):
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            log.warning(
                "%s is readable by other users (mode %o): it holds every VM's settings; restrict it: chmod %o %s",
                path, mode, private, path,
            )  # fmt: skip


def open_audit(config: RegistryConfig, store: SettingsStore) -> AuditLog:
    """The audit trail, in the store's database, with its writer thread running."""
    return AuditLog(
        store.engine,
        max_age=timedelta(hours=config.audit.max_age_hours),
        max_rows=config.audit.max_rows,
        writer=store.writer,
    ).start()


def worker_count(config: RegistryConfig) -> int:
    """http.workers, or one process per core."""
    return config.http.workers or os.cpu_count() or 1


class _Terminated(Exception):
    """SIGTERM, after uvicorn's graceful shutdown: unwind, so that each process writes its audit trail."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    # Once: a second SIGTERM (systemd signals every process, then the parent signals its workers) must
    # not break into the clean-up that writes the audit trail.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def serve(config: RegistryConfig, store: SettingsStore, listening: Listening) -> None:
    """Serve with http.workers processes on the one bound socket until interrupted (SIGINT/SIGTERM).

    The pool is emptied before forking, so no database connection is shared between processes; each
    process then opens its own connections and runs its own audit writer. Workers die with the parent,
    even when it is killed outright, so none is left holding the port.

    uvicorn answers SIGTERM by shutting down gracefully and then raising the signal again with the
    handler it found; with Python's default one, the process would die there, before its audit trail
    and its workers' are written. Ours turns it into an exception that unwinds through the clean-up.
    """
    store.close()
    signal.signal(signal.SIGTERM, _raise_terminated)
    parent = os.getpid()
    children: list[int] = []
    for _ in range(worker_count(config) - 1):
        pid = os.fork()
        if pid == 0:
            os._exit(_worker(config, store, listening, parent))
        children.append(pid)
    try:
        _serve_process(config, store, listening)
    except _Terminated:
        log.info("stopped (SIGTERM)")
    finally:
        _stop(children)
        listening.sock.close()


def _worker(config: RegistryConfig, store: SettingsStore, listening: Listening, parent: int) -> int:
    _die_with(parent)
    try:
        _serve_process(config, store, listening)
    except _Terminated:
        return 0
    except Exception:
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0


def _die_with(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _stop(children: list[int], timeout: float = 10.0) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = set(children)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            waiting.discard(pid)
        time.sleep(0.05)
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _serve_process(config: RegistryConfig, store: SettingsStore, listening: Listening) -> None:
    """One process's server: its app, audit writer and pool, on the shared socket."""
    audit = open_audit(config, store)
    tls = config.http.tls
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, store, audit),
            # The standard event loop serves connections in turn. uvloop, 3% faster here, starves some under
            # saturation: at 256 connections its p99 was 460 ms against 85 ms, at the same throughput.
            loop="asyncio",
            http="httptools",
            log_config=None,  # our handlers, with redaction
            access_log=False,  # replaced by boshreg.access, one line per request
            proxy_headers=False,  # the client address is the peer's; forwarded headers are not trusted
            server_header=False,
            lifespan="on",  # closes the event loop's database connections at shutdown
            timeout_graceful_shutdown=5,
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
        )
    )
    try:
        server.run(sockets=[listening.sock])
    finally:
        audit.stop()
        store.close()


_PR_SET_PDEATHSIG = 1


def startup_message(
    config: RegistryConfig, store: SettingsStore, listening: Listening, *, password_file: str | None = None
) -> str:
    """What ``serve`` prints once it listens: where it serves, where data lives, what to paste."""
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
        f"  database: {store.database}",
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
