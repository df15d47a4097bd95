"""Starting the registry: bind the socket, open the store, serve both through the HTTP front.

The socket is bound before anything is announced, so a port in use is one clear error and the printed
endpoint is the one really being served (also when port 0 asked for any free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import uvloop

from boshreg.errors import BoshregError
from boshreg.registry.app import RegistryApi, asgi_app
from boshreg.registry.audit import AuditLog
from boshreg.registry.audit_pending import PENDING_DIR
from boshreg.registry.config import RegistryConfig
from boshreg.registry.connections import (
    LISTEN_BACKLOG,
    ConnectionCaps,
    OpenConnections,
    RateLimitedLog,
    raise_file_limit,
)
from boshreg.registry.engine import build_engine, build_read_pool
from boshreg.registry.front import Front, FrontLimits
from boshreg.registry.metrics import ProcessMetrics, metrics_directory
from boshreg.registry.store import SettingsStore, StoreUnavailable

log = logging.getLogger(__name__)

GRACE_SECONDS = 5.0  # at SIGTERM, how long requests in flight may take to finish
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
    shared: bool = False  # SO_REUSEPORT: each worker process listens on a socket of its own (``own_socket``)


def bind(host: str, port: int, *, workers: int = 1) -> Listening:
    """Bind the registry's listening socket, or raise ServeError naming http.host / http.port.

    With several workers the socket is one of a SO_REUSEPORT group: each worker then binds its own and
    the kernel spreads new connections evenly. One socket shared by all was accepted from by whichever
    process woke first: at 64 connections every one went to the same worker, and the other idled.
    """
    shared = workers > 1 and hasattr(socket, "SO_REUSEPORT")
    try:
        if shared and port != 0:
            _listening_socket(host, port, reuse_port=False).close()  # in use (by another registry too): say so
        sock = _listening_socket(host, port, reuse_port=shared)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another http.port (--port) or http.host (--host)"
        ) from None
    return Listening(sock=sock, port=sock.getsockname()[1], advertised_host=advertised_host(host), shared=shared)


def own_socket(listening: Listening) -> Listening:
    """In a worker: a socket of its own in the parent's SO_REUSEPORT group, instead of the inherited one.

    The inherited socket is closed here, so it dies with the parent: a socket left in the group with no
    process accepting from it would take its share of connections and never answer them.
    """
    if not listening.shared:
        return listening
    address = listening.sock.getsockname()
    try:
        sock = _listening_socket(str(address[0]), int(address[1]), reuse_port=True)
    except OSError as exc:
        log.warning("worker %d accepts on the shared socket (%s)", os.getpid(), exc.strerror)
        return listening
    listening.sock.close()
    return replace(listening, sock=sock)


def _listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with Nagle on, each response's body waited for the client's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


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
    store = SettingsStore(engine, build_read_pool(config.db))
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


def open_audit(
    config: RegistryConfig, store: SettingsStore, data_dir: Path | None = None, *, write_pending: bool = False
) -> AuditLog:
    """The audit trail, in the store's database, with its writer thread running; what a stop cannot write in
    time waits in ``data_dir`` for the next start, which the process given ``write_pending`` writes back."""
    return AuditLog(
        store.engine,
        max_age=timedelta(hours=config.audit.max_age_hours),
        max_rows=config.audit.max_rows,
        writer=store.writer,
        pending_dir=data_dir / PENDING_DIR if data_dir is not None else None,
        write_pending=write_pending,
    ).start()


def worker_count(config: RegistryConfig) -> int:
    """http.workers, or one process per core."""
    return config.http.workers or os.cpu_count() or 1


def serve(config: RegistryConfig, store: SettingsStore, listening: Listening, data_dir: Path | None = None) -> None:
    """Serve with http.workers processes on the one bound socket until SIGINT or SIGTERM.

    The pool is emptied before forking, so no database connection is shared between processes; each
    process then opens its own connections and runs its own audit writer. Workers die with the parent,
    even when it is killed outright, so none is left holding the port. On SIGTERM (the parent passes it on
    to the workers at once) each process stops accepting, lets the requests in flight finish (5 s at most)
    and writes its audit trail for up to 5 s more; what is left waits in ``data_dir`` for the next start,
    whose parent process writes it.
    """
    store.close()
    caps = ConnectionCaps.for_limit(
        raise_file_limit(), config.http.max_connections, config.http.max_connections_per_address
    )
    tls = _tls_context(config)
    parent = os.getpid()
    children: list[int] = []
    # Each worker writes its metrics here once a second; whoever is scraped adds them up (``metrics``).
    metrics_dir = metrics_directory()
    try:
        for _ in range(worker_count(config) - 1):
            pid = os.fork()
            if pid == 0:
                os._exit(_worker(config, store, listening, caps, tls, parent, metrics_dir, data_dir))
            children.append(pid)
        try:
            pass_on = functools.partial(_signal, children)
            _serve_process(
                config, store, listening, caps, tls, metrics_dir, data_dir, write_pending=True, on_stop=pass_on
            )
        finally:
            _stop(children)
            listening.sock.close()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _tls_context(config: RegistryConfig) -> ssl.SSLContext | None:
    tls = config.http.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"cannot load http.tls.cert / http.tls.key: {exc}; check both files") from None
    return context


def _worker(
    config: RegistryConfig,
    store: SettingsStore,
    listening: Listening,
    caps: ConnectionCaps,
    tls: ssl.SSLContext | None,
    parent: int,
    metrics_dir: Path,
    data_dir: Path | None,
) -> int:
    _die_with(parent)
    try:
        _serve_process(config, store, own_socket(listening), caps, tls, metrics_dir, data_dir)
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


def _signal(children: list[int]) -> None:
    """SIGTERM to the workers: they stop (and write their trails) while the parent does, not after it."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _stop(children: list[int], timeout: float = 10.0) -> None:
    _signal(children)
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


def front_limits(config: RegistryConfig) -> FrontLimits:
    """The per-connection limits of http.*, as the front enforces them."""
    http = config.http
    return FrontLimits(
        header_timeout=http.header_timeout,
        request_timeout=http.request_timeout,
        keepalive_timeout=http.keepalive_timeout,
        max_header_bytes=http.max_header_bytes,
        max_headers=http.max_headers,
        max_body_bytes=http.max_body_bytes,
    )


def settle_heap() -> None:
    """Keep what start-up built out of the garbage collector's full passes.

    The modules, the app and the store are hundreds of thousands of objects that live as long as the
    process. Each full pass walked them all: 87-104 ms with every request on the worker stalled, a few
    times a minute under load. Frozen, a full pass took 10-16 ms; hot GET p99.9 at 256 connections,
    three runs each side by side: 38-53 ms frozen, 83-91 ms not.
    """
    gc.collect()
    gc.freeze()


def _serve_process(
    config: RegistryConfig,
    store: SettingsStore,
    listening: Listening,
    caps: ConnectionCaps,
    tls: ssl.SSLContext | None,
    metrics_dir: Path,
    data_dir: Path | None,
    *,
    write_pending: bool = False,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """One process's server: its app, cache, audit writer, metrics and pool, on the shared socket. The process
    given ``write_pending`` (the parent) writes back the audit events earlier stops saved; ``on_stop`` is called
    when it is told to stop."""
    audit = open_audit(config, store, data_dir, write_pending=write_pending)
    metrics = ProcessMetrics(metrics_dir).start()
    api = RegistryApi(config, store, audit, metrics)
    front = Front(
        asgi_app(api),
        api.fast_read,
        front_limits(config),
        OpenConnections(caps),
        scheme="https" if tls else "http",
        observe=metrics.answered,
        fast_read_async=api.fast_read_async,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_rate_limited_loop_errors())
        stop = asyncio.Event()

        def stopping() -> None:
            stop.set()
            if on_stop is not None:
                on_stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping)
        try:
            await front.serve(listening.sock, tls, stop, grace=GRACE_SECONDS)
        finally:
            # From here on a second SIGTERM (systemd signals every process, then the parent its workers)
            # must not kill the clean-up that writes the audit trail.
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_IGN)
            await store.aclose()  # connections opened on this event loop are closed on it

    log.info("serving in process %d", os.getpid())
    settle_heap()
    try:
        run_loop(run())
        log.info("stopped serving in process %d", os.getpid())
    finally:
        audit.stop()
        metrics.stop()
        api.close()
        store.close()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker's server on uvloop (libuv): measured side by side with asyncio's own loop on the same
    front, more cached reads a second and a lower p99 at 256 connections (README, "The serving layer")."""
    uvloop.run(main)


def _rate_limited_loop_errors() -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The event loop's own error reports (accept() out of file descriptors, ...), at most one a kind per interval.

    Without it, a full file table logged "socket.accept() out of system resource" thousands of times a second.
    """
    kinds: dict[str, RateLimitedLog] = {}

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        exc = context.get("exception")
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else message
        kinds.setdefault(message, RateLimitedLog(message)).note(reason)

    return handle


_PR_SET_PDEATHSIG = 1
