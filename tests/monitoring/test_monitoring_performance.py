"""Performance on feedback labels and the range check, on real Delta tables (no MLflow needed)."""

from __future__ import annotations

import math
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from loopline.config import Project, load_project
from loopline.errors import MonitoringError
from loopline.monitoring.performance import check_range, evaluate_performance, is_breach
from loopline.tables import DeltaStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")


def project(
    tmp_path: Path, task: str = "classification", source: str = "batch", metric: str = "accuracy", extra: str = ""
) -> tuple[Project, DeltaStore]:
    (tmp_path / "loopline.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: perf
            model: {{name: perf, task: {task}, target: y, keys: [id]}}
            training: {{estimator: sklearn.linear_model.LogisticRegression}}
            monitoring:
              source: {source}
              slices: [region]
              performance: {{metric: {metric}, max_degradation: 0.1}}
            {extra}
            """
        )
    )
    proj = load_project(tmp_path)
    return proj, DeltaStore(proj.storage_root)


def test_classification_by_keys_latest_label_wins_and_slices_from_features(tmp_path: Path) -> None:
    proj, store = project(tmp_path)
    ids = list(range(8))
    store.append(
        "features",
        pa.table({"id": ids, "x": [0.0] * 8, "region": ["n"] * 4 + ["s"] * 4, "_batch_id": ["b"] * 8}),
    )
    store.append(
        "predictions",
        pa.table(
            {
                "id": ids,
                "prediction": ["a", "a", "b", "b", "a", "a", "b", "b"],
                "scored_at": pa.array([NOW - timedelta(hours=1)] * 8, TS),
                "_batch_id": ["b"] * 8,
                "out_of_range": [False] * 8,
            }
        ),
    )
    # every row labelled; id 0 first wrongly, then corrected (the latest label wins); id 7 has no label
    store.append(
        "feedback",
        pa.table(
            {
                "request_id": pa.array([None] * 8, pa.string()),
                "id": [0, 0, 1, 2, 3, 4, 5, 6],
                "label": ["b", "a", "a", "b", "a", "a", "b", "b"],
                "received_at": pa.array([NOW, NOW + timedelta(minutes=1)] + [NOW] * 6, TS),
                "_source": ["review"] * 8,
            }
        ),
    )
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {"accuracy": 1.0, "f1": 1.0})
    assert perf.n_labelled == 7
    watched = perf.watched
    assert watched is not None and watched.value == pytest.approx(5 / 7)
    assert watched.threshold == pytest.approx(0.9) and perf.verdict == "breach"
    by_slice = {c.slice: c.value for c in perf.checks if c.metric == "accuracy"}
    assert by_slice == {None: pytest.approx(5 / 7), "region=n": 0.75, "region=s": pytest.approx(2 / 3)}


def test_no_feedback_is_no_data(tmp_path: Path) -> None:
    proj, store = project(tmp_path)
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {})
    assert perf.verdict == "no_data" and perf.message == "no feedback labels for predictions made in the window"
    assert check_range(proj, store, NOW - timedelta(days=1), NOW) is None


def test_range_share_from_the_inference_log_and_prediction_range(tmp_path: Path) -> None:
    proj, store = project(tmp_path, "regression", "inference_log", "mae", "gate: {prediction_range: [0, 10]}")
    preds = [1.0, 5.0, 11.0, -1.0, 3.0, 50.0, 2.0, 2.0]
    store.append(
        "inference_log",
        pa.table(
            {
                "request_id": [str(i) for i in range(8)],
                "timestamp": pa.array([NOW - timedelta(minutes=i) for i in range(1, 9)], TS),
                "status": pa.array([200] * 7 + [500], pa.int64()),
                "prediction": preds,
            }
        ),
    )
    got = check_range(proj, store, NOW - timedelta(hours=1), NOW)
    assert got is not None and (got.n, got.n_out) == (7, 3)  # the failed request does not count
    assert got.share == pytest.approx(3 / 7) and got.verdict == "breach" and got.threshold == 0.01
    empty = check_range(proj, store, NOW - timedelta(days=9), NOW - timedelta(days=8))
    assert empty is not None and empty.verdict == "no_data" and math.isnan(empty.share)


def test_breach_direction_per_metric() -> None:
    assert is_breach("mae", 1.3, 1.2) and not is_breach("mae", 1.1, 1.2)
    assert is_breach("accuracy", 0.7, 0.8) and not is_breach("r2", 0.9, 0.8)
    assert not is_breach("r2", math.nan, 0.8)


def test_regression_labels_must_be_numbers(tmp_path: Path) -> None:
    proj, store = project(tmp_path, "regression", "batch", "mae")
    store.append(
        "predictions",
        pa.table(
            {
                "id": [1],
                "prediction": [2.0],
                "scored_at": pa.array([NOW - timedelta(hours=1)], TS),
                "_batch_id": ["b"],
                "out_of_range": [False],
            }
        ),
    )
    store.append(
        "feedback",
        pa.table(
            {
                "request_id": pa.array([None], pa.string()),
                "id": [1],
                "label": ["high"],
                "received_at": pa.array([NOW], TS),
                "_source": ["api"],
            }
        ),
    )
    with pytest.raises(MonitoringError, match="feedback labels of a regression model must be numbers"):
        evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {})
