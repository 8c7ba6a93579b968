"""The metric registry: one definition per metric, the same value for the same rows whatever the label type."""

from __future__ import annotations

import numpy as np
import pytest

from loopline import metrics
from loopline.errors import ConfigError
from loopline.labels import spec_for
from loopline.metrics import Scored, compute, per_class

PROBA = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.4, 0.6]])


def _binary(classes: list, y: list, pred: list) -> dict[str, float]:
    kind = "bool" if isinstance(classes[0], bool) else "int" if isinstance(classes[0], int) else "str"
    spec = spec_for("classification", kind, classes)
    dtype = object if kind == "str" else None
    names = ["accuracy", "f1", "precision", "recall", "roc_auc", "pr_auc", "log_loss", "brier", "balanced_accuracy"]
    return compute(names, Scored(np.array(y, dtype=dtype), np.array(pred, dtype=dtype), PROBA, spec))


def test_binary_metrics_are_the_same_for_int_bool_and_str_labels() -> None:
    as_int = _binary([0, 1], [0, 1, 1, 0, 1], [0, 1, 0, 0, 1])
    as_bool = _binary([False, True], [False, True, True, False, True], [False, True, False, False, True])
    as_str = _binary(["no", "yes"], ["no", "yes", "yes", "no", "yes"], ["no", "yes", "no", "no", "yes"])
    assert as_int == as_bool == as_str
    assert as_int["f1"] == pytest.approx(0.8)  # binary F1 of the positive class, not a macro average
    assert as_int["accuracy"] == 0.8 and as_int["recall"] == pytest.approx(2 / 3) and as_int["precision"] == 1.0
    assert as_int["roc_auc"] == 1.0 and set(as_int) >= {"pr_auc", "log_loss", "brier"}


def test_positive_label_decides_binary_metrics() -> None:
    spec = spec_for("classification", "str", ["no", "yes"], positive="no")
    y = np.array(["no", "yes", "yes", "no", "yes"], dtype=object)
    pred = np.array(["no", "yes", "no", "no", "yes"], dtype=object)
    m = compute(["f1", "roc_auc"], Scored(y, pred, PROBA, spec))
    assert m["f1"] == pytest.approx(0.8) and m["roc_auc"] == 1.0  # "no" is positive: column 0 of the probabilities


def test_multiclass_metrics_and_per_class_view() -> None:
    spec = spec_for("classification", "str", ["a", "b", "c"])
    y = np.array(["a", "b", "c", "c"], dtype=object)
    pred = np.array(["a", "b", "b", "c"], dtype=object)
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.5, 0.4], [0.1, 0.2, 0.7]])
    m = compute(["accuracy", "f1", "f1_macro", "roc_auc", "log_loss", "brier"], Scored(y, pred, proba, spec))
    assert "f1" not in m  # binary only
    assert m["accuracy"] == 0.75 and m["roc_auc"] == 1.0
    view = per_class(Scored(y, pred, proba, spec))
    assert view["classes"] == ["a", "b", "c"] and view["support"] == [1, 1, 2]
    assert view["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert view["recall"] == [1.0, 1.0, 0.5]


def test_probability_metrics_are_skipped_without_probabilities_and_when_undefined() -> None:
    spec = spec_for("classification", "int", [0, 1])
    assert "roc_auc" not in compute(["roc_auc"], Scored(np.array([0, 1]), np.array([0, 1]), None, spec))
    one_class = compute(["roc_auc", "accuracy"], Scored(np.array([1, 1]), np.array([1, 0]), PROBA[:2], spec))
    assert one_class == {"accuracy": 0.5}


def test_regression_metrics_and_direction() -> None:
    spec = spec_for("regression", "float")
    m = compute(["mae", "rmse", "mse", "r2"], Scored(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]), None, spec))
    assert m["mae"] == pytest.approx(2 / 3) and m["mse"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert metrics.lower_is_better("mae") and metrics.lower_is_better("log_loss")
    assert not metrics.lower_is_better("r2") and not metrics.lower_is_better("roc_auc")


def test_metric_names_are_checked_per_task_and_class_count() -> None:
    with pytest.raises(ConfigError, match=r"loopline.yaml: gate.thresholds.mae: 'mae' is not a classification metric"):
        metrics.check_name("mae", "classification", "gate.thresholds.mae", "loopline.yaml")
    with pytest.raises(ConfigError, match=r"training.metrics\[0\]: 'f1' is a binary metric, but the target has 3"):
        metrics.check_name("f1", "classification", "training.metrics[0]", "loopline.yaml", n_classes=3)
    metrics.check_name("f1_macro", "classification", "k", "f", n_classes=3)
