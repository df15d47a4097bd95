"""Running the boshreg command as a user does: a real process, its output and exit code."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from pathlib import Path


def boshreg(
    *args: str,
    cwd: Path,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BOSHREG_")}
    return subprocess.run(
        [sys.executable, "-m", "boshreg", *args],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        input=stdin.decode() if stdin is not None else None,
        text=True,
        env={**environment, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("boshreg: error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.stderr


def in_a_terminal(
    args: list[str], cwd: Path, env: dict[str, str], exit_codes: tuple[int, ...] = (0,), *, stderr_too: bool = False
) -> str:
    """What a command prints when its standard output (and with ``stderr_too`` its standard error) is a
    terminal: a pseudo-terminal here, read while the command runs so that it never blocks on a full one."""
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "boshreg", *args], cwd=cwd, stdout=terminal,
            stderr=terminal if stderr_too else subprocess.PIPE, timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith(("BOSHREG_", "NO_COLOR"))} | env,
        )  # fmt: skip
        assert process.returncode in exit_codes, process.stderr
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    return b"".join(chunks).decode()
