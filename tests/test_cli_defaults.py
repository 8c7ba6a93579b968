"""A new user's path with defaults only: init -> ingest -> train -> promote -> run batch -> monitor.

Batch-scored rows must reach monitoring (lineage from predictions back to the scored features rows), and a
check without rows says no_data (exit 11), never ok.
"""

from __future__ import annotations

import json
from pathlib import Path

from _support import run_cli


def test_init_to_monitor_with_defaults_checks_the_scored_rows(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    assert run_cli("init", str(root)).returncode == 0
    for args in (("run", "ingest"), ("run", "train"), ("promote",), ("run", "batch")):
        r = run_cli(*args, "--project", str(root))
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    r = run_cli("monitor", "--project", str(root))
    assert r.returncode in (0, 10), r.stdout + r.stderr  # within thresholds or a breach, but checked
    q = "select feature, n_current, verdict from monitoring where kind = 'dataset_drift'"
    rows = _json_lines(run_cli("sql", q, "--format", "json", "--project", str(root)).stdout)
    assert rows == [{"feature": "*", "n_current": 168, "verdict": "ok"}]  # the last 7 days of the scored rows
    lineage = "select distinct _batch_id, _input_batch_id from predictions"
    (row,) = _json_lines(run_cli("sql", lineage, "--format", "json", "--project", str(root)).stdout)
    assert row["_batch_id"].startswith("features-v") and row["_input_batch_id"].startswith("sample-")

    # a window without scored rows: no_data and exit 11, visible in status
    r = run_cli("monitor", "--since", "2020-01-01", "--until", "2020-01-02", "--project", str(root))
    assert r.returncode == 11 and "no data in window 2020-01-01 00:00 .. 2020-01-02 00:00" in r.stdout
    status = json.loads(run_cli("status", "--json", "--project", str(root)).stdout)
    assert status["monitoring"]["verdict"] == "no_data"


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_input_batch_with_a_query_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    assert run_cli("init", str(root)).returncode == 0
    text = (root / "loopline.yaml").read_text()
    query = '  query: "select * from features"'
    (root / "loopline.yaml").write_text(text.replace('  # query: "select * from features where', query + "\n  #", 1))
    for args in (("run", "ingest"), ("run", "train"), ("promote",)):
        assert run_cli(*args, "--project", str(root)).returncode == 0
    r = run_cli("run", "batch", "--input-batch", "x", "--project", str(root))
    assert r.returncode == 1 and "--input-batch filters batch.input by _batch_id; it cannot be combined" in r.stderr


def test_version_flag() -> None:
    import loopline

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"loopline {loopline.__version__}"
