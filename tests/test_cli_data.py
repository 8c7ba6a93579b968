"""The data-layer commands through the real `loopline` console script."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loopline.config import load_project
from loopline.tables import DeltaStore


def seed(project_dir: Path) -> DeltaStore:
    p = load_project(project_dir, "dev")
    store = DeltaStore(p.storage_root)
    now = datetime.now(UTC)
    ts = pa.array([now - timedelta(days=200), now - timedelta(days=1)], pa.timestamp("us", tz="UTC"))
    store.append("raw", pa.table({"_ingested_at": ts, "_batch_id": ["a", "b"], "x": [1, 2]}))
    return store


def test_help_is_fast_and_light() -> None:
    code = (
        "import sys; sys.argv = ['loopline', '--help']\n"
        "from loopline.cli import run\n"
        "run()\n"
        "heavy = [m for m in ('mlflow', 'pyspark', 'scipy', 'pandas', 'sklearn', 'deltalake') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stderr
    for command in ("ingest", "sql", "tables", "check", "retention", "run"):
        assert command in out.stdout


def test_sql_formats(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    seed(project_dir)
    r = cli("sql", "select x from raw order by x", "--format", "csv", cwd=project_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['"x"', "1", "2"]
    r = cli("sql", "select x from raw order by x", "--format", "json", cwd=project_dir)
    assert [json.loads(line) for line in r.stdout.splitlines()] == [{"x": 1}, {"x": 2}]
    out = project_dir / "out.parquet"
    r = cli("sql", "select * from raw", "-f", "parquet", "-o", str(out), cwd=project_dir)
    assert r.returncode == 0 and pq.read_table(out).num_rows == 2
    r = cli("sql", "select count(*) as n from raw", cwd=project_dir)
    assert r.returncode == 0 and "n" in r.stdout and "2" in r.stdout


def test_sql_refuses_writes(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    seed(project_dir)
    r = cli("sql", "delete from raw", cwd=project_dir)
    assert r.returncode == 1
    assert "only read-only queries are allowed; this is a DELETE statement" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("sql", "select 1", "--format", "xml", cwd=project_dir)
    assert r.returncode == 1 and "--format must be one of table, csv, json, parquet, got 'xml'" in r.stderr


def test_tables_lists_versions(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("tables", cwd=project_dir)
    assert r.returncode == 0 and "no tables yet" in r.stdout
    seed(project_dir)
    r = cli("tables", cwd=project_dir)
    assert r.returncode == 0 and "raw" in r.stdout and "WRITE" in r.stdout


def test_retention_command(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cfg = project_dir / "loopline.yaml"
    cfg.write_text(cfg.read_text() + "retention: {raw: 90d}\n")
    store = seed(project_dir)
    r = cli("retention", cwd=project_dir)
    assert r.returncode == 0, r.stderr
    assert "raw: deleted 1 rows" in r.stdout
    assert store.read("raw").column("x").to_pylist() == [2]


def test_check_lists_every_problem(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("check", cwd=project_dir)
    assert r.returncode == 0 and "is valid" in r.stdout
    cfg = project_dir / "loopline.yaml"
    text = cfg.read_text().replace("path: data/points.csv", "path: data/missing.csv")
    text += "features: {hook: nopkg.feats:build}\ntraining: {estimator: sklearn.linear_model.Nope}\n"
    cfg.write_text(text)
    r = cli("check", cwd=project_dir)
    assert r.returncode == 2
    assert "3 problem(s)" in r.stderr
    assert "features.hook: cannot import module 'nopkg.feats'" in r.stderr
    assert "training.estimator 'sklearn.linear_model.Nope' cannot be imported" in r.stderr
    assert "sources.points.path: 'data/missing.csv' does not exist" in r.stderr


def test_config_error_exit_code(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cfg = project_dir / "loopline.yaml"
    cfg.write_text(cfg.read_text() + "serving: {port: -1}\n")
    r = cli("tables", cwd=project_dir)
    assert r.returncode == 2
    assert "loopline.yaml: serving.port must be a number >= 1, got -1" in r.stderr
    assert "Traceback" not in r.stderr


def test_sql_sandbox_and_timeout_through_the_cli(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    seed(project_dir)
    for query in ("select * from read_csv('/etc/passwd')", "select * from read_text('/proc/self/environ')"):
        r = cli("sql", query, cwd=project_dir)
        assert r.returncode == 1, r.stderr
        assert "file system operations are disabled" in r.stderr and "Traceback" not in r.stderr
    r = cli(
        "sql", "select count(*) from range(1000000000000) a where a.range % 7 = 3", "--timeout", "1", cwd=project_dir
    )
    assert r.returncode == 1 and "ran longer than 1 s" in r.stderr, r.stderr


def test_sql_csv_and_json_with_nested_columns(project_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    seed(project_dir)
    query = "select x, [x, 2] as l, map {'a': x} as m, {'k': x} as s from raw order by x"
    r = cli("sql", query, "--format", "csv", cwd=project_dir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == '"x","l","m","s"'
    assert lines[1] == '1,"[1,2]","{""a"":1}","{""k"":1}"'
    r = cli("sql", query, "--format", "json", cwd=project_dir)
    assert json.loads(r.stdout.splitlines()[0]) == {"x": 1, "l": [1, 2], "m": {"a": 1}, "s": {"k": 1}}
