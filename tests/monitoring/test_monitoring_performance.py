"""Performance on feedback labels and the range check, on real Delta tables (no MLflow needed)."""

from __future__ import annotations

import math
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
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


# ----------------------------------------------------------------------------- typed labels (column contract)
def typed_batch(
    store: DeltaStore, preds: pa.Array, labels: pa.Array, probability: list[float] | None = None, **extra: pa.Array
) -> None:
    n = len(preds)
    cols: dict[str, pa.Array] = {
        "id": pa.array(range(n), pa.int64()),
        "prediction": preds,
        "scored_at": pa.array([NOW - timedelta(hours=1)] * n, TS),
        "_batch_id": pa.array(["b"] * n),
        "out_of_range": pa.array([False] * n),
    }
    if probability is not None:
        cols["probability"] = pa.array(probability, pa.float64())
    cols.update(extra)
    store.append("predictions", pa.table(cols))
    store.append(
        "feedback",
        pa.table(
            {
                "request_id": pa.array([None] * n, pa.string()),
                "id": pa.array(range(n), pa.int64()),
                "label": labels,
                "received_at": pa.array([NOW] * n, TS),
                "_source": ["api"] * n,
            }
        ),
    )


def test_binary_f1_is_the_positive_class_and_catches_what_macro_f1_missed(tmp_path: Path) -> None:
    """The gate's F1 is binary F1 of the positive class: the rare positives are all missed here, which macro F1
    (the old monitoring F1) averaged away."""
    from sklearn.metrics import f1_score, roc_auc_score

    from loopline.labels import spec_for

    proj, store = project(tmp_path, metric="f1")
    y = [0] * 90 + [1] * 10
    pred = [0] * 90 + [0] * 5 + [1] * 5
    p1 = [0.1] * 90 + [0.4] * 5 + [0.9] * 5
    typed_batch(store, pa.array(pred, pa.int64()), pa.array(y, pa.int64()), p1)
    spec = spec_for("classification", "int", [0, 1], target="y")
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {"f1": 0.8, "roc_auc": 0.9}, spec)
    got = {c.metric: c.value for c in perf.checks if c.slice is None}
    assert got["f1"] == pytest.approx(f1_score(y, pred)) == pytest.approx(2 / 3)
    assert f1_score(y, pred, average="macro") > 0.72  # the old F1: within 10% of 0.8, no breach
    assert perf.verdict == "breach" and perf.watched is not None and perf.watched.threshold == pytest.approx(0.72)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    recall = {c.label: c for c in perf.class_checks if c.statistic == "recall"}
    assert recall[1].value == pytest.approx(0.5) and recall[1].n == 10 and recall[1].verdict == "ok"  # no gate view


def test_roc_auc_can_be_watched_and_needs_probabilities(tmp_path: Path) -> None:
    from loopline.labels import spec_for

    proj, store = project(tmp_path, metric="roc_auc")
    spec = spec_for("classification", "bool", [False, True], target="y")
    typed_batch(store, pa.array([True, False, True, False]), pa.array([True, False, False, False]))
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {"roc_auc": 0.9}, spec)
    assert perf.verdict == "no_data" and perf.n_labelled == 4
    assert perf.message == (
        "roc_auc not computed on 4 labelled predictions: roc_auc, log_loss not computed: the labelled predictions "
        "have no probability / probabilities column"
    )
    assert {c.metric for c in perf.checks if c.slice is None} == {"accuracy", "f1"}


def test_old_text_columns_parse_with_the_spec_and_unknown_labels_are_left_out(tmp_path: Path) -> None:
    from loopline.labels import spec_for

    proj, store = project(tmp_path)
    spec = spec_for("classification", "bool", [False, True], target="y")
    # predictions as str(np.bool_) wrote them, labels as text from an old feedback API, one label not a class
    typed_batch(
        store, pa.array(["True", "False", "True", "False", "True"]), pa.array(["true", "false", "0", "0", "maybe"])
    )
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {}, spec)
    assert perf.n_labelled == 4 and perf.watched is not None and perf.watched.value == pytest.approx(0.75)
    assert perf.notes == [
        "1 feedback label(s) not one of the model's classes [False, True] were left out (predictions): 'maybe' (1)",
        "roc_auc, log_loss not computed: the labelled predictions have no probability / probabilities column",
    ]


def test_multiclass_probabilities_map_in_the_models_class_order(tmp_path: Path) -> None:
    from sklearn.metrics import log_loss, roc_auc_score

    from loopline.labels import spec_for

    proj, store = project(tmp_path, metric="roc_auc")
    spec = spec_for("classification", "str", ["a", "b", "c"], target="y")
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], size=60)
    y = rng.choice(["a", "b", "c"], size=60)
    pred = np.array(["a", "b", "c"])[proba.argmax(axis=1)]
    # the map's entries in another order than the model's classes, keys as the label type
    maps = [[("c", float(r[2])), ("a", float(r[0])), ("b", float(r[1]))] for r in proba]
    typed_batch(
        store,
        pa.array(pred.tolist()),
        pa.array(y.tolist()),
        proba.max(axis=1).tolist(),
        probabilities=pa.array(maps, pa.map_(pa.string(), pa.float64())),
    )
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {"roc_auc": 0.5}, spec)
    got = {c.metric: c.value for c in perf.checks if c.slice is None}
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", labels=["a", "b", "c"]))
    assert got["log_loss"] == pytest.approx(log_loss(y, proba, labels=["a", "b", "c"]))
    assert perf.per_class["classes"] == ["a", "b", "c"] and sum(perf.per_class["support"]) == 60


def test_binary_metric_on_a_multiclass_model_is_a_config_error(tmp_path: Path) -> None:
    from loopline.errors import ConfigError
    from loopline.labels import spec_for

    proj, store = project(tmp_path, metric="f1")
    spec = spec_for("classification", "str", ["a", "b", "c"], target="y")
    typed_batch(store, pa.array(["a"]), pa.array(["a"]))
    with pytest.raises(ConfigError, match=r"monitoring\.performance\.metric: 'f1' is a binary metric, but the target"):
        evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {}, spec)


def test_classifier_range_is_the_probability_column(tmp_path: Path) -> None:
    from loopline.labels import spec_for

    proj, store = project(tmp_path, source="both", extra="gate: {prediction_range: [0.05, 0.95]}")
    spec = spec_for("classification", "int", [0, 1], target="y")
    n = 6
    store.append(
        "inference_log",
        pa.table(
            {
                "request_id": [str(i) for i in range(n)],
                "timestamp": pa.array([NOW - timedelta(minutes=i + 1) for i in range(n)], TS),
                "status": pa.array([200] * n, pa.int64()),
                "prediction": pa.array([0, 0, 1, 1, 1, 0], pa.int64()),
                "probability": pa.array([0.01, 0.3, 0.99, 0.7, 0.6, None]),
            }
        ),
    )
    typed_batch(store, pa.array([1, 0], pa.int64()), pa.array([1, 0], pa.int64()), [0.97, 0.2])
    store.append(
        "predictions",
        pa.table(
            {
                "id": pa.array([5], pa.int64()),
                "prediction": pa.array([1], pa.int64()),
                "scored_at": pa.array([NOW - timedelta(hours=1)], TS),
                "out_of_range": pa.array([True]),
            }
        ),
    )
    got = check_range(proj, store, NOW - timedelta(hours=2), NOW, spec)
    assert got is not None and got.column == "probability"
    assert (got.n, got.n_out) == (5 + 3, 2 + 1)  # log: 0.01 and 0.99 out, the null not counted; batch: its flags
    assert got.message == "3 of 8 probabilities out of range (37.50%, limit 1.00%)"


def test_latest_verdicts_takes_the_worse_prediction_drift_row(tmp_path: Path) -> None:
    from loopline.monitoring.monitor import MONITORING_SCHEMA, latest_verdicts

    proj, store = project(tmp_path)
    base = {
        "checked_at": NOW,
        "window_start": NOW - timedelta(days=7),
        "window_end": NOW,
        "model_version": "3",
        "slice": None,
        "threshold": 0.1,
        "n_reference": 10,
        "n_current": 10,
    }
    rows = [
        {**base, "kind": "prediction_drift", "feature": "prediction", "statistic": "jensenshannon", "value": 0.3},
        {**base, "kind": "prediction_drift", "feature": "probability", "statistic": "wasserstein", "value": 0.01},
        {**base, "kind": "performance", "feature": "accuracy", "statistic": "accuracy", "value": 0.9},
        {
            **base,
            "kind": "performance",
            "feature": "per_class",
            "statistic": "recall",
            "value": 0.1,
            "slice": "class=b",
        },
    ]
    verdicts = ["breach", "ok", "ok", "breach"]
    table = pa.Table.from_pylist([{**r, "verdict": v} for r, v in zip(rows, verdicts, strict=True)])
    store.append("monitoring", table.select(MONITORING_SCHEMA.names).cast(MONITORING_SCHEMA))
    got = latest_verdicts(proj)
    # the per-class row is information: the watched metric (accuracy) decides performance
    assert got["kinds"] == {"prediction_drift": "breach", "performance": "ok"} and got["verdict"] == "breach"


def test_a_champion_without_classes_takes_them_from_the_rows(tmp_path: Path) -> None:
    """A hook model with no ``classes_``: its label type is kept, the classes are those of the labelled rows."""
    from loopline.labels import LabelSpec

    proj, store = project(tmp_path, metric="f1")
    typed_batch(store, pa.array(["0", "1", "1", "0"]), pa.array([0, 1, 0, 0], pa.int64()))
    perf = evaluate_performance(proj, store, NOW - timedelta(days=1), NOW, {}, LabelSpec("classification", "int"))
    assert perf.per_class["classes"] == [0, 1] and perf.watched is not None
    assert perf.watched.value == pytest.approx(2 / 3)  # positive class 1: precision 1/2, recall 1
