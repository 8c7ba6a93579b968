"""`loopline replay`: the real loop over a labelled history, judged against never-retrained and an oracle.

Synthetic histories with an abrupt concept flip halfway (hourly rows, weekly windows): the loop must
recover within two windows of the flip, and every bad input is a clear error or a recorded decision.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from _support import run_cli
from loopline.config import load_project
from loopline.replay import ReplayError, cut_windows, parse_sets, replay

WEEKS, FLIP = 8, 4  # windows; the concept flips at the start of window FLIP


def history(n_weeks: int = WEEKS, flip: int = FLIP, classification: bool = False, seed: int = 0) -> str:
    """CSV text: id, ts (hourly), day, x1, x2, y. After week ``flip`` the effect of x1 reverses."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    lines = ["id,ts,day,x1,x2,y"]
    for i in range(n_weeks * 7 * 24):
        ts = start + timedelta(hours=i)
        x1, x2 = rng.normal(), rng.normal()
        sign = -1.0 if i >= flip * 7 * 24 else 1.0
        score = sign * 3.0 * x1 + 0.5 * x2
        y = int(score + rng.normal(0, 0.5) > 0) if classification else score + rng.normal(0, 0.3) + 10
        lines.append(f"{i},{ts.isoformat()},{i // 24},{x1:.5f},{x2:.5f},{y}")
    return "\n".join(lines) + "\n"


def make(tmp_path: Path, classification: bool = False, extra: str = "") -> Path:
    task = "classification" if classification else "regression"
    estimator = "HistGradientBoostingClassifier" if classification else "HistGradientBoostingRegressor"
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "history.csv").write_text(history(classification=classification))
    (tmp_path / "loopline.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: flip
            model: {{name: flip, task: {task}, target: y, keys: [id], time_column: ts}}
            sources:
              history: {{kind: csv, path: data/history.csv}}
            contract: {{strict: false}}
            training:
              estimator: sklearn.ensemble.{estimator}
              params: {{max_iter: 40, random_state: 0}}
              split: {{method: time, valid: 0.15, test: 0.15}}
            retraining: {{triggers: [drift, performance]}}
            replay:
              source: history
              every: 7d
              initial: 2
              policies:
                frozen: {{retraining: {{triggers: [range]}}}}
            environments: {{dev: {{}}}}
            """
        )
        + extra
    )
    return tmp_path


@pytest.mark.slow
def test_regression_replay_recovers_after_a_concept_flip(tmp_path: Path) -> None:
    p = load_project(make(tmp_path))
    result = replay(p, policies=["frozen"], say=lambda _line: None)
    current, frozen = result.policies
    assert result.metric == "mae" and result.lower_is_better
    assert [w.label for w in current.windows] == [f"2024-01-{d:02d}" for d in (15, 22, 29)] + ["2024-02-05"] + [
        "2024-02-12",
        "2024-02-19",
    ]
    flip = FLIP - 2  # index of the flip window among the replayed ones
    before = current.windows[flip - 1]
    assert before.loop is not None and before.never_retrained is not None
    after = current.windows[flip + 2]  # two windows after the flip: recovered
    assert after.loop is not None and after.never_retrained is not None and after.oracle is not None
    assert after.loop < 0.5 * after.never_retrained, [(w.label, w.loop, w.never_retrained) for w in current.windows]
    assert after.loop <= 1.5 * after.oracle
    assert any(w.action.startswith("promoted") for w in current.windows[flip:])
    # the frozen policy never retrains: it is the never-retrained model, window by window
    assert all(w.loop == pytest.approx(w.never_retrained) for w in frozen.windows)
    assert frozen.mean("loop") > current.mean("loop")  # type: ignore[operator]

    # the replay table and the page with the three curves
    from loopline.tables import DeltaStore

    rows = DeltaStore(p.storage_root).read("replay").to_pylist()
    assert len(rows) == 12 and {r["policy"] for r in rows} == {"current", "frozen"}
    assert {r["replay_id"] for r in rows} == {result.replay_id}
    page = result.report.read_text()  # type: ignore[union-attr]
    for name in ("loop (champion of the moment)", "never retrained", "oracle (refit every window)"):
        assert page.count(f">{name}</text>") == 2  # one legend entry per policy chart
    assert page.count("<polyline") == 6


@pytest.mark.slow
def test_classification_replay_through_the_cli(tmp_path: Path) -> None:
    root = make(tmp_path, classification=True)
    r = run_cli("replay", "--project", str(root), "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["metric"] == "roc_auc" and not data["lower_is_better"]
    (policy,) = data["policies"]
    means = policy["means"]
    assert means["loop"] > means["never_retrained"]  # the never-retrained model is wrong after the flip
    windows = policy["windows"]
    assert windows[-1]["loop"] > 0.8 and windows[-1]["never_retrained"] < 0.3
    assert Path(data["report"]).is_file()
    shown = run_cli("sql", "select policy, count(*) as n from replay group by policy", "--project", str(root))
    assert shown.returncode == 0 and "current" in shown.stdout


def test_windows_are_cut_by_time_or_rows(tmp_path: Path) -> None:
    import pyarrow.csv as pacsv

    (tmp_path / "h.csv").write_text(history(n_weeks=3))
    table = pacsv.read_csv(tmp_path / "h.csv")
    weeks = cut_windows(table, "ts", "7d", None)
    assert [w.rows.num_rows for w in weeks] == [168, 168, 168]
    assert weeks[1].start == datetime(2024, 1, 8, tzinfo=UTC) and weeks[1].label == "2024-01-08"
    by_rows = cut_windows(table, None, None, 100)
    assert [w.rows.num_rows for w in by_rows] == [100] * 5 + [4] and by_rows[5].label == "rows 501-504"
    months = cut_windows(table, "ts", "1mo", None)
    assert len(months) == 1 and months[0].label == "2024-01"


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(__import__("io").BytesIO(history(n_weeks=1).encode()))
    with pytest.raises(ReplayError, match=r"the history has no column 'when' \(model.time_column\) to cut --every 7d"):
        cut_windows(table, "when", "7d", None)
    with pytest.raises(ReplayError, match=r"--every \(1mo, 2w, 7d, 12h\) or --rows N, not both"):
        cut_windows(table, "ts", "7d", 10)
    with pytest.raises(ReplayError, match=r"--every must look like 1mo, 2w, 7d or 12h, got '7 days'"):
        cut_windows(table, "ts", "7 days", None)
    with pytest.raises(ReplayError, match=r"--set must look like section.key=value, got 'refit'"):
        parse_sets(["refit"])
    assert parse_sets(["training.refit=false", "retraining.triggers=[always]"]) == {
        "training": {"refit": False},
        "retraining": {"triggers": ["always"]},
    }
    p = load_project(make(tmp_path / "p"))
    with pytest.raises(ReplayError, match=r"unknown replay policy \['nope'\]"):
        replay(p, policies=["nope"], say=lambda _line: None)
    with pytest.raises(ReplayError, match=r"the history makes 8 window\(s\); replaying needs more than the 8 initial"):
        replay(p, initial=8, say=lambda _line: None)
    r = run_cli("replay", "--project", str(tmp_path / "p"), "--set", "training.refit=maybe")
    assert r.returncode == 2 and "training.refit must be true or false, got 'maybe'" in r.stderr
    r = run_cli("replay", "--project", str(tmp_path / "p"), "--every", "1d", "--rows", "5")
    assert r.returncode == 1 and "not both" in r.stderr and "Traceback" not in r.stderr
