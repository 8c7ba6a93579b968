"""Shared fixtures: temporary projects, free loopback ports, real PostgreSQL, Java for Spark.

A test needing PostgreSQL or Java skips with a reason on a laptop without them; under CI
(``CI=true``) the same absence is a failure, so CI always runs the real thing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
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


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server for one test, dropped afterwards."""
    import psycopg

    admin = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DB}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        skip_or_fail(f"no PostgreSQL answers at {PG_HOST}:{PG_PORT} ({exc})")
        raise
    name = f"loopline_t_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def java() -> str:
    """Java for pyspark local mode; sets PYSPARK_PYTHON to this interpreter."""
    exe = shutil.which("java")
    if exe is None:
        skip_or_fail("Java is not installed (pyspark local mode needs it)")
        raise AssertionError
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return exe


MINIMAL_YAML = textwrap.dedent(
    """\
    project: demo
    model:
      name: demo
      target: y
      keys: [id]
    sources:
      points:
        kind: csv
        path: data/points.csv
    contract:
      columns:
        id: {type: int, nullable: false, unique: true}
        x: {type: float, min: 0, max: 100}
        y: {type: float}
    environments:
      dev: {}
      prod: {}
    """
)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A minimal valid project folder with a small CSV source."""
    (tmp_path / "loopline.yaml").write_text(MINIMAL_YAML)
    (tmp_path / "data").mkdir()
    rows = ["id,x,y"] + [f"{i},{i % 50}.5,{2 * (i % 50) + 1}.0" for i in range(200)]
    (tmp_path / "data" / "points.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real `loopline` console command in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    return subprocess.run(
        [str(VENV_BIN / "loopline"), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    return run_cli
