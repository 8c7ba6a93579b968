"""Integration: the Bikeshare example ingests Jan-Mar 2011 month by month into a features table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from loopline.config import load_project
from loopline.ingest import run_pipeline
from loopline.tables import DeltaStore

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bikeshare"
MONTH_ROWS = {1: 688, 2: 649, 3: 730}  # hours with data in the ISLP file


@pytest.fixture
def bikeshare(tmp_path: Path) -> Path:
    dest = tmp_path / "bikeshare"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".loopline", "__pycache__", ".pytest_cache"))
    return dest


def test_config_loads_in_every_environment(bikeshare: Path) -> None:
    for env in ("dev", "staging", "prod"):
        project = load_project(bikeshare, env)
        assert project.registered_model == f"{env}.bikeshare"
        assert project.storage_root == str(bikeshare / ".loopline" / env / "tables")
    assert load_project(bikeshare, "prod").config.contract.max_failure_rate == 0.0
    assert load_project(bikeshare).config.retention["raw"].days == 90


def test_jan_to_mar_produce_features_at_a_known_version(bikeshare: Path, cli) -> None:  # type: ignore[no-untyped-def]
    project = load_project(bikeshare, "dev")
    store = DeltaStore(project.storage_root)
    for i, (month, rows) in enumerate(MONTH_ROWS.items()):
        result = run_pipeline(project, "bikeshare", params={"month": month})
        assert result.ingest.batch_id == f"bikeshare-2011-{month:02d}"
        assert (result.ingest.rows, result.validation.failing_rows, result.features.rows) == (rows, 0, rows)
        assert result.features.version == i
    assert store.version("features") == 2
    features = store.read("features")
    assert features.num_rows == sum(MONTH_ROWS.values()) == 2067
    assert {"ts", "bikers", "hour", "hour_sin", "weather", "_batch_id"} <= set(features.column_names)
    assert {"casual", "registered"}.isdisjoint(features.column_names)
    ts = features.column("ts")
    assert str(pc.min(ts).as_py()) == "2011-01-01 00:00:00+00:00"
    assert str(pc.max(ts).as_py()) == "2011-03-31 23:00:00+00:00"
    assert pc.count_distinct(ts).as_py() == 2067
    assert not store.exists("quarantine")

    # re-ingesting January with the job (source defaults to the first) replaces that batch: one more version
    res = cli("run", "ingest", "--param", "month=1", "--env", "dev", cwd=bikeshare)
    assert res.returncode == 0, res.stderr
    assert "bikeshare-2011-01" in res.stdout
    runs = store.read("runs").to_pylist()
    assert [(r["job"], r["status"]) for r in runs] == [("ingest", "ok")]
    assert store.version("features") == 3
    assert store.read("features").num_rows == 2067
    assert store.read("raw").num_rows == 2067
    assert store.read("features", version=2).num_rows == 2067  # the pinned version is still readable


def test_the_examples_own_tests_pass(bikeshare: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(bikeshare / "tests")],
        cwd=bikeshare,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},  # the example needs no plugins; starts faster
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 passed" in res.stdout
