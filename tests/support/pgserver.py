"""A PostgreSQL server of the test's own, in a temporary directory, that the test may stop and start.

The machine's shared server must stay up for every other test; an outage is made real on this one:
``initdb`` into a fresh directory, ``pg_ctl start`` on a free port, ``pg_ctl stop -m fast`` to take it
away under load. As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL


class PgServerUnavailable(Exception):
    """No PostgreSQL server binaries here, or no user to run them as."""


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise PgServerUnavailable("pg_ctl not found (apt-get install postgresql)")
    return Path(found).parent


class PgServer:
    """One throw-away PostgreSQL server on 127.0.0.1:``port``, data in ``directory``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.bin = _bin_dir()
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.port = port
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PgServerUnavailable("running as root and there is no postgres user to run the server") from None
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")

    def stop(self) -> None:
        """Stop at once, as an operator's fast shutdown does: sessions are ended, clients see the server go."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {result.stderr.strip()} {log}")
