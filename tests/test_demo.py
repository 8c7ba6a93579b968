"""The closed-loop demo end to end: real ingest, MLflow, gate, batch, HTTP server, feedback, monitoring, loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bikeshare"


@pytest.mark.slow
def test_demo_replays_2011_and_the_loop_beats_the_frozen_model(tmp_path: Path) -> None:
    from loopline.config import load_project
    from loopline.demo import run_demo
    from loopline.tables import DeltaStore

    project_dir = tmp_path / "bikeshare"
    shutil.copytree(EXAMPLE, project_dir, ignore=shutil.ignore_patterns(".loopline", "__pycache__"))
    lines: list[str] = []
    result = run_demo(project_dir, env="dev", sample=8, say=lines.append)

    assert [m.month for m in result.months] == list(range(4, 13))
    assert sum(m.rows for m in result.months) == 8645 - 2067  # Apr-Dec of the 8,645 hours; Jan-Mar trained on
    # The frozen Jan-Mar model drifts badly into summer; the loop retrains and promotes its way back.
    assert result.mae_baseline > 60
    assert result.mae_loop < 0.8 * result.mae_baseline, (result.mae_loop, result.mae_baseline)
    summer = [m for m in result.months if m.month in (7, 8)]
    assert all(m.mae_champion < 0.6 * m.mae_baseline for m in summer)
    assert any(m.action.startswith("promoted") for m in result.months)
    assert len({m.champion_version for m in result.months}) > 1, "the champion moved during the year"
    assert result.report is not None and result.report.read_text().startswith("<!DOCTYPE html>")

    project = load_project(project_dir, "dev")
    store = DeltaStore(project.storage_root)
    served = sum(m.served for m in result.months)
    assert served == 8 * 9
    assert store.read("inference_log", columns=["request_id"]).num_rows == served, "every served prediction is logged"
    assert store.read("feedback", columns=["label"]).num_rows == 8645 - 2067
    steps = set(store.read("decisions", columns=["step"]).column("step").to_pylist())
    assert {"monitor", "train", "gate", "promote"} <= steps
    assert any(line.startswith("Jul: champion v") for line in lines)
