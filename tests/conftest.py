"""Fixtures shared by the suites: real databases and real registry processes."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy.engine import URL

from boshreg.bootstrap.credentials import instance_token
from support import linklocal
from support.databases import BACKENDS, Backend, backend, required, url_text
from support.pgserver import PgServer, PgServerUnavailable
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess, free_port, write_config

# Every socket of this process and of every Python process a test starts refuses link-local addresses.
_GUARD_LOG = Path(tempfile.mkstemp(prefix="boshreg-linklocal-", suffix=".log")[1])
# The log goes with the run, also one pytest ends before configuring (a path not found): each such run left one.
atexit.register(_GUARD_LOG.unlink, missing_ok=True)
os.environ[linklocal.LOG_VARIABLE] = str(_GUARD_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).parent / "support" / "guard_site"), *filter(None, [os.environ.get("PYTHONPATH")])]
)
linklocal.install()


@pytest.fixture(autouse=True)
def no_link_local_traffic() -> Iterator[None]:
    """Fail any test during which a process tried to reach 169.254.0.0/16 (the platform's metadata service)."""
    before = _GUARD_LOG.stat().st_size
    yield
    with _GUARD_LOG.open(encoding="utf-8") as log:
        log.seek(before)
        attempts = log.read().split()
    if attempts:
        pytest.fail(f"a link-local address was contacted (refused by the guard): {' '.join(attempts[1::2])}")


_reasons: dict[str, str | None] = {}
_skipped: dict[str, str] = {}


def unusable(name: str, reason: str) -> NoReturn:
    """Skip, listed at the end of the run; or fail when ``name`` is in BOSHREG_REQUIRE."""
    if name in required():
        pytest.fail(f"required {name} is unavailable: {reason}")
    _skipped[name] = reason
    pytest.skip(f"{name} unavailable: {reason}")


def usable_backend(name: str) -> Backend:
    """The backend, or a skip (a failure when the backend is required) saying why it is unusable."""
    chosen = backend(name)
    if name not in _reasons:
        _reasons[name] = chosen.unavailable_reason()
    reason = _reasons[name]
    if reason is not None:
        unusable(name, reason)
    return chosen


def required_tool(name: str, install_hint: str) -> str:
    """The tool's path, or a skip (a failure when it is required) saying how to install it."""
    path = shutil.which(name)
    if path is None:
        unusable(name, f"{name} is not installed ({install_hint})")
    return path


@pytest.fixture(scope="session")
def genisoimage() -> str:
    """Nova's own config drive tool, for proving layout compatibility."""
    return required_tool("genisoimage", "apt-get install genisoimage, or make tools as root")


BACKEND_PARAMS = [pytest.param(name, marks=getattr(pytest.mark, name), id=name) for name in BACKENDS]
SERVER_BACKEND_PARAMS = [p for p in BACKEND_PARAMS if p.id != "sqlite"]


@pytest.fixture(params=BACKEND_PARAMS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A fresh, empty database on each backend in turn."""
    with usable_backend(request.param).fresh_database(tmp_path) as url:
        yield url


@pytest.fixture(params=SERVER_BACKEND_PARAMS)
def server_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A fresh, empty database on each networked backend (those that can go away)."""
    with usable_backend(request.param).fresh_database(tmp_path) as url:
        yield url


@pytest.fixture
def own_postgres() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, running, that the test may stop and start."""
    directory = Path(tempfile.mkdtemp(prefix="boshreg-pg-"))  # not under pytest's root-only tmp_path
    try:
        try:
            server = PgServer(directory, free_port())
        except PgServerUnavailable as exc:
            unusable("postgres", f"a server of the test's own: {exc}")
        server.start()
        try:
            yield server
        finally:
            server.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class RegistryLauncher:
    """Starts ``boshreg serve`` processes in one directory; ``close()`` stops them and checks their logs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[RegistryProcess] = []

    def __call__(
        self,
        db: URL | str | None = None,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        loglevel: str = "info",
        cafile: str | None = None,
        cloud: dict[str, Any] | None = None,
        wrapper: list[str] | None = None,
        **http: Any,
    ) -> RegistryProcess:
        port = free_port()
        if args is None:
            db_text = url_text(db) if isinstance(db, URL) else db or f"sqlite:///{self.directory}/registry.db"
            config = write_config(self.directory / f"registry-{port}.yml", db_text, port, loglevel, cloud, **http)
            args = ["--config", str(config)]
        process = RegistryProcess(self.directory, [*args, "--port", str(port)], port, env, cafile, wrapper)
        self.started.append(process)
        return process.start()

    @contextmanager
    def starting_late(
        self, delay: float, then: Callable[[RegistryProcess], None] = lambda _registry: None
    ) -> Iterator[RegistryProcess]:
        """A registry (SQLite, config mode) that is not up yet: it starts ``delay`` s in, then runs ``then``."""
        port = free_port()
        config = write_config(self.directory / f"late-{port}.yml", f"sqlite:///{self.directory}/late-{port}.db", port)
        late = RegistryProcess(self.directory, ["--config", str(config)], port)
        self.started.append(late)

        def start_later() -> None:
            time.sleep(delay)
            late.start()
            then(late)

        starter = threading.Thread(target=start_later)
        starter.start()
        try:
            yield late
        finally:
            starter.join(timeout=30)

    def close(self) -> None:
        for process in self.started:
            process.stop()
        for process in self.started:
            assert_no_secrets(process.stderr())


StartRegistry = RegistryLauncher


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[RegistryLauncher]:
    """Start registry processes for one test."""
    launcher = RegistryLauncher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One SQLite-backed registry for a whole module of HTTP tests (they use distinct instance ids)."""
    launcher = RegistryLauncher(tmp_path_factory.mktemp("registry"))
    yield launcher(additional_users=[{"username": "director", "password": "d1rector-pw"}])
    launcher.close()


def assert_no_secrets(log_text: str, *secrets: str) -> None:
    """Logs may name users, instances and URLs, but never a password, the instance secret or a VM's token."""
    instance_ids = set(re.findall(r"/instances/([^/\s]+)/", log_text))
    tokens = [instance_token(INSTANCE_SECRET, instance_id) for instance_id in instance_ids]
    for secret in (ADMIN_PASSWORD, INSTANCE_SECRET, "postgres:postgres@", *tokens, *secrets):
        assert secret not in log_text, f"a secret leaked into the registry log: {secret[:3]}..."


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped:
        terminalreporter.section("BACKENDS AND TOOLS SKIPPED", sep="!", red=True, bold=True)
        for name, reason in sorted(_skipped.items()):
            terminalreporter.line(f"{name}: {reason}", red=True)
        terminalreporter.line("list them in BOSHREG_REQUIRE (as .ci/run does) to make this a failure")
