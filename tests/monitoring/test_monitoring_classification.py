"""Monitoring a classifier end to end: a model trained by loopline, its predictions in the tables' column
contract (typed ``prediction``, ``probability``, ``probabilities``), typed feedback labels, and the monitor.

The gate's own test rows are scored through the real tables and labelled as feedback: monitoring must give
the gate's ``test_<metric>`` on them (same registry, same positive class, same rows), and scoring the
training data itself must not look like prediction drift (whatever the target's type).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from _lifecycle import features_table, make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline.config import Project, load_project
from loopline.labels import LabelSpec
from loopline.monitoring.monitor import MonitorResult, monitor
from loopline.tables import DeltaStore

pytestmark = pytest.mark.usefixtures("one_thread")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")


def targets(y: np.ndarray) -> dict[str, np.ndarray]:
    cut = np.quantile(y, [0.15, 0.6])
    return {
        "int": (y > 7.5).astype(np.int64),
        "bool": y > 7.5,
        "str": np.where(y > 7.5, "high", "low").astype(object),
        "multiclass": np.where(y < cut[0], "rare", np.where(y < cut[1], "mid", "top")).astype(object),
    }


WATCHED = {"int": "f1", "bool": "f1", "str": "f1", "multiclass": "f1_macro"}


@dataclass
class Trained:
    kind: str
    root: Path
    project: Project
    store: DeltaStore
    spec: LabelSpec
    version: str
    metrics: dict[str, float]
    per_class: dict[str, Any]
    features: Any  # pandas frame of the whole features table
    test: Any  # pandas frame of the gate's test rows


def _train(root: Path, kind: str) -> Trained:
    import pandas as pd

    from loopline import registry, tracking
    from loopline.training import test_rows, train

    p = make_project(
        root,
        {
            "model": {"task": "classification", "target": "label"},
            # HistGradientBoostingClassifier; refit off: the deployed model is then the one the gate scored
            # (a refit on every row would be scored on rows it trained on)
            "training": {"estimator": None, "params": {"max_iter": 10}, "refit": False},
            "gate": {"thresholds": None, "min_improvement": None, "prediction_range": [0.0, 1.0]},
            "monitoring": {
                "source": "batch",
                "time": "wall",
                "performance": {"metric": WATCHED[kind], "max_degradation": 0.2},
            },
        },
    )
    store = DeltaStore(p.storage_root)
    t = features_table()
    label = targets(t.column("y").to_numpy())[kind]
    store.overwrite("features", t.drop(["y"]).append_column("label", [pa.array(label.tolist())]))
    r = train(p)
    assert r.gate.passed, r.gate.failed_rules
    registry.promote(p)
    mv = tracking.client(p).get_model_version(p.registered_model, r.version)
    from loopline.monitoring.monitor import champion_info, load_champion

    rt = load_champion(p, champion_info(p))
    test, _ = test_rows(p)
    whole = store.read("features").to_pandas()
    assert isinstance(whole, pd.DataFrame)
    return Trained(
        kind,
        root,
        p,
        store,
        rt.spec,
        r.version,
        r.metrics,
        json.loads(mv.tags["loopline.gate.per_class"]),
        whole,
        test,
    )


@pytest.fixture(scope="module", params=["int", "bool", "str", "multiclass"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _train(tmp_path_factory.mktemp(f"cls-{request.param}"), request.param)


# ----------------------------------------------------------------------------- tables in the column contract
def scored(t: Trained, frame: Any) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The champion's labels (typed Arrow), its probability column and class probabilities on ``frame``."""
    from loopline.monitoring.monitor import champion_info, load_champion

    rt = load_champion(t.project, champion_info(t.project))
    out = rt.predict_frame(frame)
    assert out.proba is not None
    return pa.array(out.predictions.tolist(), t.spec.arrow_type), t.spec.score(out.predictions, out.proba), out.proba


def prob_map(spec: LabelSpec, proba: np.ndarray, drop: Any = None) -> pa.Array:
    rows = [[(c, float(p)) for c, p in zip(spec.classes, row, strict=True) if c != drop] for row in proba]
    return pa.array(rows, pa.map_(spec.arrow_type, pa.float64()))


def predictions_table(t: Trained, frame: Any, batch: str, at: datetime, drop: Any = None) -> pa.Table:
    pred, prob, proba = scored(t, frame)
    n = len(frame)
    return pa.table(
        {
            "id": pa.array(frame["id"].to_numpy(), pa.int64()),
            "prediction": pred,
            "probability": pa.array(prob, pa.float64()),
            "probabilities": prob_map(t.spec, proba, drop),
            "model_name": [t.project.registered_model] * n,
            "model_version": [t.version] * n,
            "run_id": ["r"] * n,
            "scored_at": pa.array([at] * n, TS),
            "_batch_id": [batch] * n,
            "out_of_range": pa.array([False] * n),
        }
    )


def feedback_by_key(ids: Any, labels: pa.Array, at: datetime) -> pa.Table:
    n = len(labels)
    return pa.table(
        {
            "request_id": pa.array([None] * n, pa.string()),
            "id": pa.array(np.asarray(ids), pa.int64()),
            "label": labels,
            "received_at": pa.array([at] * n, TS),
            "_source": ["api"] * n,
        }
    )


def fresh_tables(t: Trained) -> DeltaStore:
    """Drop every production table of an earlier test (module-scoped project)."""
    import shutil

    for name in ("predictions", "inference_log", "feedback", "monitoring"):
        path = Path(t.project.storage_root) / name
        if path.exists():
            shutil.rmtree(path)
    return DeltaStore(t.project.storage_root)


def run(t: Trained, **kw: Any) -> MonitorResult:
    return monitor(t.project, since=NOW - timedelta(days=1), until=NOW, now=NOW, **kw)


# ----------------------------------------------------------------------------- tests
def test_monitoring_gives_the_gates_metrics_on_the_gates_test_rows(trained: Trained) -> None:
    t = trained
    store = fresh_tables(t)
    # the whole training data scored (the reference itself), the gate's test rows labelled
    store.append("predictions", predictions_table(t, t.features, "b1", NOW - timedelta(hours=2)))
    labels = pa.array(t.test["label"].tolist(), t.spec.arrow_type)
    store.append("feedback", feedback_by_key(t.test["id"], labels, NOW - timedelta(hours=1)))
    res = run(t)
    perf = res.performance
    assert perf is not None and perf.n_labelled == len(t.test), perf.message
    got = {c.metric: c.value for c in perf.checks if c.slice is None}
    names = ["accuracy", "roc_auc", "log_loss"] + (["f1_macro"] if t.kind == "multiclass" else ["f1"])
    for m in names:
        assert got[m] == pytest.approx(t.metrics[f"test_{m}"], rel=1e-9, abs=1e-12), m
    watched = perf.watched
    assert watched is not None and watched.metric == WATCHED[t.kind] and watched.verdict == "ok"
    assert watched.baseline == pytest.approx(t.metrics[f"test_{WATCHED[t.kind]}"])
    assert perf.verdict == "ok" and perf.notes == []

    # the per-class view is the gate's, class by class
    view = perf.per_class
    assert [str(c) for c in view["classes"]] == [str(c) for c in t.per_class["classes"]]
    for key in ("precision", "recall", "f1"):
        assert view[key] == pytest.approx(t.per_class[key]), key
    assert view["support"] == t.per_class["support"] and view["confusion_matrix"] == t.per_class["confusion_matrix"]
    assert {c.verdict for c in perf.class_checks} <= {"ok", "no_data"}

    # the same data as the reference is no prediction drift, for the label and the probability
    rows = {f.feature: f for f in res.prediction_drifts}
    assert set(rows) == {"prediction", "probability"}
    assert rows["prediction"].verdict == "ok" and rows["probability"].verdict == "ok", res.message
    assert rows["prediction"].n_current == rows["prediction"].n_reference == len(t.features)
    assert "prediction_drift" not in res.breaches and res.drift.verdict == "ok"

    # per-class rows and the confusion matrix in the monitoring table
    table = store.read("monitoring").to_pylist()
    per_class = {(r["slice"], r["statistic"]): r for r in table if r["feature"] == "per_class"}
    first = t.spec.classes[0]
    text = str(first).lower() if isinstance(first, bool) else str(first)
    assert per_class[(f"class={text}", "recall")]["value"] == pytest.approx(t.per_class["recall"][0])
    assert per_class[(f"class={text}", "support")]["value"] == t.per_class["support"][0]
    assert per_class[(f"class={text}", "recall")]["n_reference"] == t.per_class["support"][0]  # gate-time support
    cells = [r for r in table if r["feature"] == "confusion_matrix"]
    assert sum(r["value"] for r in cells) == len(t.test) and all(r["statistic"].startswith("predicted=") for r in cells)
    kinds = {r["kind"]: r["verdict"] for r in table if r["kind"] == "prediction_drift"}
    assert kinds == {"prediction_drift": "ok"}

    # `loopline status` reads the same per-class view back from the monitoring table
    from loopline.status import latest_monitoring

    m = latest_monitoring(store)
    assert m is not None
    texts = [str(c).lower() if isinstance(c, bool) else str(c) for c in t.spec.classes]
    assert m.per_class["classes"] == texts and m.per_class["support"] == t.per_class["support"]
    assert m.per_class["recall"] == pytest.approx(t.per_class["recall"])
    assert m.per_class["confusion_matrix"] == t.per_class["confusion_matrix"]

    # the reports: the per-class chart and both confusion matrices, offline
    assert res.report_html is not None and res.report_json is not None
    html = res.report_html.read_text()
    assert "Per class (labelled predictions in the window vs the gate)" in html and "per class: window" in html
    assert html.count('<table class="cm">') == 2 and "prediction drift (probability)" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    data = json.loads(res.report_json.read_text())
    assert data["performance"]["per_class"]["support"] == t.per_class["support"]
    assert [d["feature"] for d in data["prediction_drifts"]] == ["prediction", "probability"]
    assert len(data["performance"]["class_checks"]) == 3 * len(t.spec.classes)


def test_old_text_tables_are_read_with_the_label_contract(trained: Trained) -> None:
    """Predictions and labels stored as text by earlier versions: parsed with the spec, no false drift."""
    t = trained
    store = fresh_tables(t)
    yaml = (t.root / "loopline.yaml").read_text().replace("source: batch", "source: inference_log")
    (t.root / "loopline.yaml").write_text(yaml)
    try:
        p = load_project(t.root, "dev")
        pred, _, _ = scored(t, t.features)
        n = len(t.features)
        ids = [f"r{i}" for i in range(n)]
        as_text = [str(np.bool_(v)) if isinstance(v, bool) else str(v) for v in pred.to_pylist()]  # "True", "1"
        log = pa.table(
            {
                "request_id": ids,
                "timestamp": pa.array([NOW - timedelta(hours=3) + timedelta(seconds=i) for i in range(n)], TS),
                "model_name": [p.registered_model] * n,
                "model_version": [t.version] * n,
                "endpoint": ["/invocations"] * n,
                "status": pa.array([200] * n, pa.int64()),
                "latency_ms": pa.array([1.0] * n),
                "prediction": pa.array(as_text, pa.string()),
                **{c: t.features[c].to_numpy() for c in ("x1", "x2", "x3")},
            }
        )
        store.append("inference_log", log)
        test_ids = set(t.test["id"].tolist())
        rows = zip(ids, t.features["id"], t.features["label"], strict=True)
        labelled = [(rid, lab) for rid, i, lab in rows if i in test_ids]
        text_labels = [str(lab).lower() if isinstance(lab, (bool, np.bool_)) else str(lab) for _, lab in labelled]
        store.append(
            "feedback",
            pa.table(
                {
                    "request_id": [rid for rid, _ in labelled],
                    "label": pa.array(text_labels, pa.string()),
                    "received_at": pa.array([NOW - timedelta(hours=1)] * len(labelled), TS),
                    "_source": ["api"] * len(labelled),
                }
            ),
        )
        res = monitor(p, since=NOW - timedelta(days=1), until=NOW, now=NOW, write=False)
        perf = res.performance
        assert perf is not None and perf.n_labelled == len(t.test), perf.message
        watched = perf.watched
        assert watched is not None
        assert watched.value == pytest.approx(t.metrics[f"test_{WATCHED[t.kind]}"], rel=1e-9)
        assert "roc_auc" not in {c.metric for c in perf.checks}
        assert any("no probability / probabilities column" in n for n in perf.notes), perf.notes
        rows = {f.feature: f for f in res.prediction_drifts}
        assert rows["prediction"].verdict == "ok", rows["prediction"].detail
        assert rows["probability"].verdict == "no_data"
        assert rows["probability"].detail == "no probability in the current window's predictions"
        assert res.verdict == "ok", res.message
    finally:
        (t.root / "loopline.yaml").write_text(yaml.replace("source: inference_log", "source: batch"))
        t.project = load_project(t.root, "dev")


def test_shifted_predictions_are_prediction_drift(trained: Trained) -> None:
    """Only rows the champion scores as the same class: the label distribution drifts."""
    t = trained
    store = fresh_tables(t)
    pred, _, _ = scored(t, t.features)
    one = t.spec.classes[-1]
    mask = np.asarray([v == one for v in pred.to_pylist()])
    frame = t.features[mask]
    store.append("predictions", predictions_table(t, frame, "b1", NOW - timedelta(hours=2)))
    res = run(t)
    rows = {f.feature: f for f in res.prediction_drifts}
    assert rows["prediction"].verdict == "breach" and "prediction_drift" in res.breaches
    assert res.prediction_drift is not None and res.prediction_drift.verdict == "breach"
    from loopline.monitoring.monitor import latest_verdicts

    assert latest_verdicts(t.project)["kinds"]["prediction_drift"] == "breach"  # the worse of the two rows


def test_probabilities_without_every_class_skip_the_metric_not_the_check(trained: Trained) -> None:
    """A map lacking a class: a binary model falls back to ``probability``; a multiclass one skips the metrics
    that need every class's probability, with a note, and still judges the rest."""
    t = trained
    store = fresh_tables(t)
    rows = predictions_table(t, t.test, "b1", NOW - timedelta(hours=2), drop=t.spec.classes[0])
    store.append("predictions", rows)
    labels = pa.array(t.test["label"].tolist(), t.spec.arrow_type)
    store.append("feedback", feedback_by_key(t.test["id"], labels, NOW - timedelta(hours=1)))
    res = run(t, write=False)
    perf = res.performance
    assert perf is not None and perf.verdict == "ok", perf.message
    if t.kind != "multiclass":  # P(positive) from the probability column completes the matrix
        got = {c.metric: c.value for c in perf.checks if c.slice is None}
        assert got["roc_auc"] == pytest.approx(t.metrics["test_roc_auc"], rel=1e-12) and perf.notes == []
        return
    assert {c.metric for c in perf.checks if c.slice is None} == {"accuracy", "f1_macro"}
    assert perf.notes == [
        f"roc_auc, log_loss not computed: {len(t.test)} of {len(t.test)} labelled predictions lack the probability "
        "of some class (probabilities map without every class of the model)"
    ]


def test_cli_prints_the_per_class_view(trained: Trained, cli) -> None:  # type: ignore[no-untyped-def]
    t = trained
    store = fresh_tables(t)
    store.append("predictions", predictions_table(t, t.test, "b1", NOW - timedelta(hours=2)))
    labels = pa.array(t.test["label"].tolist(), t.spec.arrow_type)
    store.append("feedback", feedback_by_key(t.test["id"], labels, NOW - timedelta(hours=1)))
    since, until = (NOW - timedelta(days=1)).isoformat(), NOW.isoformat()
    out = cli("monitor", "--project", str(t.root), "--since", since, "--until", until)
    assert out.returncode in (0, 10), out.stderr
    assert "per class: window (gate-time test)" in out.stdout and "probability drift" in out.stdout
    first = t.spec.classes[0]
    assert (str(first).lower() if isinstance(first, bool) else str(first)) in out.stdout
