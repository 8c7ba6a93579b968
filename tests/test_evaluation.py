"""The champion/challenger gate: broken candidates, range checks, thresholds, improvement rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from _lifecycle import BROKEN_HOOKS, make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline import registry, tracking
from loopline.context import context
from loopline.errors import ConfigError
from loopline.evaluation import GateResult
from loopline.training import train

HOOK = {"training": {"estimator": None, "hook": "lifehooks:train_raises"}}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("hook", "reason"),
    [
        (
            "lifehooks:train_raises",
            "candidate_scores: the candidate raises on predict (RuntimeError: boom: this model is broken)",
        ),
        (
            "lifehooks:train_wrong_shape",
            "candidate_scores: the candidate returns the wrong output shape: expected (80,), got (80, 2)",
        ),
    ],
)
def test_broken_candidate_fails_the_gate_with_the_reason(tmp_path: Path, hook: str, reason: str) -> None:
    p = make_project(
        tmp_path, {"training": {"estimator": None, "hook": hook}}, extra_files={"lifehooks.py": BROKEN_HOOKS}
    )
    r = train(p)  # never crashes
    assert not r.gate.passed and r.gate.failed_rules == [reason]
    c = tracking.client(p)
    mv = c.get_model_version("dev.demo", r.version)
    assert mv.tags["loopline.gate.verdict"] == "failed"
    assert json.loads(mv.tags["loopline.gate.failed_rules"]) == [reason]
    assert tracking.alias_version(p, "challenger") is None
    assert c.get_run(r.run_id).data.tags["loopline.gate.verdict"] == "failed"


def test_candidate_that_fails_to_load(tmp_path: Path) -> None:
    import shutil

    p = make_project(tmp_path)
    r = train(p)
    local = tracking.download(context(p), f"models:/dev.demo/{r.version}")
    assert local  # the registered artifacts live under the project's artifact root: break them
    root = Path(p.artifact_root.removeprefix("file://"))
    for f in root.rglob("model.skops"):
        f.write_bytes(b"not a model")
    shutil.rmtree(local, ignore_errors=True)
    from loopline.evaluation import gate
    from loopline.training import test_rows

    result = gate(p, r.version, test_rows(p)[0])
    assert not result.passed and result.failed_rules[0].startswith("candidate_scores: the candidate fails to load (")


def test_prediction_range_thresholds_and_champion_metrics(tmp_path: Path) -> None:
    p = make_project(
        tmp_path, {"gate": {"prediction_range": [0.0, 5.0], "thresholds": {"mae": {"max": 0.01}, "r2": {"min": 0.5}}}}
    )
    r = train(p)
    rules = r.gate.failed_rules
    assert rules[0].startswith("prediction_range: ") and "test predictions outside [0, 5] (min " in rules[0]
    assert rules[1].startswith("threshold.mae: mae ") and rules[1].endswith("> max 0.01")
    assert len(rules) == 2  # r2 passes
    assert r.gate.rules_checked == [
        "candidate_scores",
        "predictions_finite",
        "prediction_range",
        "threshold.mae",
        "threshold.r2",
    ]


def test_improvement_over_champion_recorded_on_both(tmp_path: Path) -> None:
    gate = {"min_improvement": {"mae": {"absolute": 0.05}, "r2": {"relative": 0.0}}}
    p = make_project(tmp_path, {"gate": gate, "training": {"refit": False}})  # the same rows: like with like
    first = train(p)
    registry.promote(p)
    better = train(p, params_override={"max_iter": 60})
    assert better.gate.passed and better.gate.champion_version == first.version
    mv = tracking.client(p).get_model_version("dev.demo", better.version)
    assert mv.tags["loopline.gate.champion_version"] == "1"
    assert float(mv.tags["loopline.gate.champion.mae"]) == pytest.approx(better.gate.champion_metrics["mae"])
    assert str(tracking.alias_version(p, "challenger").version) == better.version  # type: ignore[union-attr]
    worse = train(p, params_override={"max_iter": 2})
    rules = worse.gate.failed_rules
    assert [r.split(":")[0] for r in rules] == ["min_improvement.mae", "min_improvement.r2"]  # not_worse.mae: covered
    assert "is worse than champion v1's" in rules[0] and rules[0].endswith("(must be lower by at least 0.05)")
    assert rules[1].endswith("(must not be worse)")
    assert str(tracking.alias_version(p, "champion").version) == "1"  # type: ignore[union-attr]


def test_unknown_gate_metric_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"loopline.yaml: gate.min_improvement.accuracy: 'accuracy' is not a regression metric \(valid: mae",
    ):
        make_project(tmp_path, {"gate": {"min_improvement": {"accuracy": {"absolute": 0.1}}}})


def test_gate_result_renders_as_json() -> None:
    g = GateResult(
        model="m",
        candidate_version="2",
        champion_version="1",
        passed=False,
        n_test=3,
        candidate_metrics={"mae": 1.5},
        champion_metrics={"mae": 1.0},
        failed_rules=["x"],
    )
    d = json.loads(json.dumps(g.to_dict()))
    assert d["verdict"] == "failed" and d["failed_rules"] == ["x"]
    assert g.rows() == [("mae", "1.5", "1")]


def test_classification_metrics_through_the_registry(tmp_path: Path) -> None:
    from _lifecycle import features_table
    from loopline.tables import DeltaStore

    p = make_project(
        tmp_path,
        {
            "model": {"task": "classification", "target": "label"},
            "training": {"estimator": None, "params": {"max_iter": 10}},  # default: HistGradientBoostingClassifier
            "gate": None,
        },
    )
    t = features_table()
    label = (t.column("y").to_numpy() > 7.5).astype("int64")
    DeltaStore(p.storage_root).overwrite("features", t.drop(["y"]).append_column("label", [label]))
    r = train(p)
    assert r.gate.passed, r.gate.failed_rules
    assert r.gate.rules_checked == ["candidate_scores", "predictions_finite"]  # of the probabilities
    assert set(r.gate.candidate_metrics) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert r.metrics["valid_roc_auc"] > 0.8 and r.metrics["test_accuracy"] > 0.6
    assert r.label == {
        "task": "classification",
        "label_type": "int",
        "classes": [0, 1],
        "positive_label": 1,
        "threshold": None,
        "target": "label",
    }
    view = r.gate.candidate_per_class
    assert view["classes"] == [0, 1] and sum(view["support"]) == r.gate.n_test
    assert sum(map(sum, view["confusion_matrix"])) == r.gate.n_test
    c = tracking.client(p)
    run = c.get_run(r.run_id)
    assert run.data.tags["loopline.trainer"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert json.loads(run.data.tags["loopline.label"])["classes"] == [0, 1]
    assert "gate_candidate_recall.1" in run.data.metrics
    tags = c.get_model_version("dev.demo", r.version).tags
    assert json.loads(tags["loopline.gate.per_class"])["classes"] == [0, 1]


def _drifted(p: Any, shift: float, n: int = 400) -> None:
    """Append ``n`` newer rows whose target moved by ``shift`` (a concept drift the champion never saw)."""
    from datetime import timedelta

    import pyarrow.compute as pc

    from _lifecycle import features_table
    from loopline.tables import DeltaStore

    store = DeltaStore(p.storage_root)
    old = store.read("features")
    new = features_table(n=n, seed=7, shift=shift)
    later = pc.add(new.column("ts"), pa.scalar(timedelta(days=30)))
    new = new.set_column(new.schema.get_field_index("ts"), "ts", later)
    new = new.set_column(0, "id", pa.array(range(old.num_rows, old.num_rows + n), pa.int64()))
    store.overwrite("features", pa.concat_tables([old, new.cast(old.schema)]))


def test_a_floor_never_keeps_a_worse_champion(tmp_path: Path) -> None:
    """Both below the absolute floor after a drift: the better model is promoted and the breach is recorded."""
    p = make_project(tmp_path, {"gate": {"thresholds": {"mae": {"max": 0.2}}, "min_improvement": None}})
    first = train(p)
    assert not first.gate.passed and first.gate.failed_rules[0].startswith("threshold.mae: mae ")
    registry.promote(p, first.version, force=True, reason="bootstrap below the floor")
    _drifted(p, shift=6.0)
    second = train(p)
    assert second.gate.passed, second.gate.failed_rules
    assert second.gate.candidate_metrics["mae"] > 0.2  # still below the floor ...
    assert second.gate.candidate_metrics["mae"] < second.gate.champion_metrics["mae"]  # ... but better
    (breach,) = second.gate.floor_breaches
    assert breach.startswith("threshold.mae: mae ") and "the better model wins" in breach
    tags = tracking.client(p).get_model_version("dev.demo", second.version).tags
    assert json.loads(tags["loopline.gate.floor_breaches"]) == [breach]
    assert second.gate.rules_checked[-2:] == ["threshold.mae", "not_worse.mae"]


def test_the_gate_compares_on_rows_the_champion_never_saw(tmp_path: Path) -> None:
    """After new rows arrive, the test rows are only the ones after the champion's training cutoff; the
    registered model is refit on everything, so the next champion's cutoff is the newest row."""
    from loopline.training import champion_cutoff

    p = make_project(tmp_path, {"gate": {"min_improvement": None}})
    first = train(p)
    registry.promote(p, first.version)
    cutoff = champion_cutoff(p)
    assert cutoff is not None and cutoff.isoformat().startswith("2024-01-17T15:00:00")
    _drifted(p, shift=3.0, n=100)
    second = train(p)
    assert second.n_test == 50  # the newest half of the rows the champion never saw (the older half trains)
    assert second.gate.passed and second.gate.candidate_metrics["mae"] < second.gate.champion_metrics["mae"]
    registry.promote(p, second.version)
    assert champion_cutoff(p).isoformat().startswith("2024-02-04T03:00:00")  # type: ignore[union-attr]
    run = tracking.client(p).get_run(second.run_id)
    assert run.data.tags["loopline.trained_rows"] == "500"
