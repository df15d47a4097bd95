"""Running the boshreg command as a user does: a real process, its output and exit code."""

from __future__ import annotations

import os
import subprocess
import sys
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
