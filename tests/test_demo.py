"""`loopline demo`: the replay of 2011 of the Bikeshare example through the whole loop, a real HTTP server
included (ingest, MLflow, gate, batch, /invocations, /feedback, monitoring by event time, the loop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _support import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bikeshare"


@pytest.mark.slow
def test_demo_replays_2011_and_the_loop_tracks_the_oracle(tmp_path: Path) -> None:
    from loopline.tables import DeltaStore

    project_dir = tmp_path / "bikeshare"
    shutil.copytree(EXAMPLE, project_dir, ignore=shutil.ignore_patterns(".loopline", "__pycache__"))
    r = run_cli("demo", "--project", str(project_dir), "--sample", "8", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "policy current: mae per window" in r.stdout and "loop / oracle" in r.stdout

    rows = DeltaStore(str(project_dir / ".loopline" / "dev" / "tables")).read("replay").to_pylist()
    assert [row["label"] for row in rows] == [f"2011-{m:02d}" for m in range(4, 13)]
    assert sum(row["rows"] for row in rows) == 8645 - 2067  # Apr-Dec of the 8,645 hours; Jan-Mar trained on
    loop = sum(row["loop"] for row in rows) / len(rows)
    never = sum(row["never_retrained"] for row in rows) / len(rows)
    oracle = sum(row["oracle"] for row in rows) / len(rows)
    # the frozen Jan-Mar model drifts badly into summer; the loop retrains its way back, close to the oracle
    assert never > 60 and loop < 0.6 * never and loop < 1.15 * oracle, (loop, never, oracle)
    assert any(row["action"].startswith("promoted") for row in rows)
    assert len({row["champion_version"] for row in rows}) > 2, "the champion moved during the year"

    state = DeltaStore(str(project_dir / ".loopline" / "replay" / "current" / "tables"))
    assert state.read("inference_log", columns=["request_id"]).num_rows == 8 * 9, "every served prediction is logged"
    feedback = state.read("feedback", columns=["label", "request_id"])
    assert feedback.num_rows == 8645 - 2067 and str(feedback.schema.field("label").type) == "double"
    steps = set(state.read("decisions", columns=["step"]).column("step").to_pylist())
    assert {"monitor", "train", "gate", "promote"} <= steps
    report = next((project_dir / ".loopline" / "replay").glob("replay-*.html")).read_text()
    assert report.startswith("<!doctype html>") and report.count("<polyline") == 3
    summary = json.loads(run_cli("status", "--json", "--project", str(project_dir)).stdout or "{}")
    assert "tables" in summary


def test_demo_refuses_a_project_that_is_not_the_example_before_touching_its_state(tmp_path: Path) -> None:
    project_dir = tmp_path / "mine"
    shutil.copytree(EXAMPLE, project_dir, ignore=shutil.ignore_patterns(".loopline", "__pycache__"))
    cfg = (project_dir / "loopline.yaml").read_text()
    (project_dir / "loopline.yaml").write_text(cfg.replace("project: bikeshare", "project: mine"))
    kept = project_dir / ".loopline" / "replay" / "current" / "mlflow.db"
    kept.parent.mkdir(parents=True)
    kept.write_text("my state")

    r = run_cli("demo", "--project", str(project_dir), timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{project_dir / 'loopline.yaml'} is not the Bikeshare example" in r.stderr
    assert "nothing was changed" in r.stderr
    assert kept.read_text() == "my state"
    assert sorted(p.name for p in (project_dir / ".loopline").iterdir()) == ["replay"]
