"""Shared fixtures: temporary projects, free loopback ports, real PostgreSQL, Java for Spark.

A test needing PostgreSQL or Java skips with a reason on a laptop without them; under CI
(``CI=true``) the same absence is a failure, so CI always runs the real thing.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import PG_ADMIN_DB, PG_HOST, PG_PORT, PG_USER, free_port, run_cli, skip_or_fail


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """A command run in-process (typer's CliRunner) sets the private umask of a loaded project for the rest of
    the process, as the CLI does for its own: give every test the umask it started with."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


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


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    return run_cli
