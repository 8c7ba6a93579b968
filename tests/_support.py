"""Helpers shared by the tests (import as `from _support import ...`; conftest.py names collide)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

PG_HOST = os.environ.get("LOOPLINE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LOOPLINE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("LOOPLINE_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("LOOPLINE_TEST_PG_DB", "test")
IN_CI = os.environ.get("CI", "").lower() == "true"
VENV_BIN = Path(sys.executable).parent


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop; under CI=true a missing real dependency is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run for real)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real `loopline` console command in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    return subprocess.run(
        [str(VENV_BIN / "loopline"), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
