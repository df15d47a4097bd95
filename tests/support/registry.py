"""A real ``boshreg serve`` process on a free loopback port, for tests that speak HTTP to it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from boshreg.testcloud.ports import free_port as free_port  # the tests' free port is the test cloud's

STARTUP_SECONDS = 30


class RegistryProcess:
    """One registry process; its stdout and stderr are kept for assertions."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        cafile: str | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.wrapper = wrapper or []  # e.g. prlimit, to start the server under a file limit
        self.cafile = cafile  # set: the registry serves https, trusted through this CA
        self.workdir = workdir
        self.args = args
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.stdout_path = workdir / f"registry-{port}.out"
        self.stderr_path = workdir / f"registry-{port}.err"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cafile else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "boshreg", "serve", *self.args],
                cwd=self.workdir,
                stdout=out,
                stderr=err,
                env=self.env,
            )
        self._wait_until_serving()
        return self

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"registry exited with {self.process.returncode}: {self.stderr()}")
            try:
                verify = ssl.create_default_context(cafile=self.cafile) if self.cafile else True
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry did not answer /healthz within {STARTUP_SECONDS} s: {self.stderr()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


def write_config(
    path: Path, db: str, port: int, loglevel: str = "info", cloud: dict[str, Any] | None = None, **http: Any
) -> Path:
    # One worker unless a test asks for more: throttle counts and the like are per process.
    settings = {"host": "127.0.0.1", "port": port, "user": "admin", "password": ADMIN_PASSWORD, "workers": 1, **http}
    config = {
        "loglevel": loglevel,
        "http": {key: value for key, value in settings.items() if value is not None},
        "db": db,
        "data_dir": str(path.parent / "data"),  # the test's own, whatever the database
    }
    if cloud is not None:
        config["cloud"] = cloud
    path.write_text(yaml.safe_dump(config))
    return path


# Distinctive, so that a leak into any log is found by a plain search.
ADMIN_PASSWORD = "s3cret-Adm1n-pw"
INSTANCE_SECRET = "instance-secret-for-tests-0123456789"
