"""One registry of model metrics, shared by training, the gate, monitoring, replay and reports.

Every metric is defined once here, with its task, direction and what it needs, so the F1 the gate
judged a candidate by is the F1 monitoring watches in production. Binary metrics (``f1``,
``precision``, ``recall``, ``roc_auc``, ``pr_auc``, ``brier``) are taken for the model's positive
class (``model.positive_label``; default the second class in sorted order, as in scikit-learn);
``roc_auc``, ``log_loss`` and ``brier`` also work on multiclass models (one-vs-rest macro ROC AUC,
multiclass log loss and Brier score). Metrics that need probabilities are skipped (absent from the
result) when the model gives none; a metric undefined on the rows (ROC AUC with one class present)
is absent too, and callers say so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loopline.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from loopline.labels import LabelSpec


@dataclass(frozen=True)
class Scored:
    """Labels and model output on the same rows: what every metric is computed from."""

    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None = None  # (n, len(classes)) in the order of spec.classes
    spec: LabelSpec | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    description: str
    lower_is_better: bool = False
    needs_proba: bool = False
    binary_only: bool = False
    fn: Callable[[Scored], float] | None = None


def _sk() -> Any:
    from sklearn import metrics as skm

    return skm


def _pos(s: Scored) -> Any:
    assert s.spec is not None
    return s.spec.positive


def _binary_avg(fn_name: str) -> Callable[[Scored], float]:
    def f(s: Scored) -> float:
        return float(getattr(_sk(), fn_name)(s.y_true, s.y_pred, pos_label=_pos(s), average="binary", zero_division=0))

    return f


def _averaged(fn_name: str, average: str) -> Callable[[Scored], float]:
    def f(s: Scored) -> float:
        return float(getattr(_sk(), fn_name)(s.y_true, s.y_pred, average=average, zero_division=0))

    return f


def _positive_scores(s: Scored) -> Any:
    import numpy as np

    assert s.spec is not None and s.proba is not None
    return np.asarray(s.y_true) == s.spec.positive, s.proba[:, s.spec.positive_index()]


def _roc_auc(s: Scored) -> float:
    import numpy as np

    assert s.spec is not None and s.proba is not None
    if s.spec.binary:
        y, p = _positive_scores(s)
        return float(_sk().roc_auc_score(y, p))
    present = np.isin(s.spec.class_array(), np.asarray(s.y_true))
    if present.sum() < 2:
        raise ValueError("ROC AUC needs at least two classes among the labels")
    return float(_sk().roc_auc_score(s.y_true, s.proba, multi_class="ovr", labels=list(s.spec.classes)))


def _pr_auc(s: Scored) -> float:
    y, p = _positive_scores(s)
    if not y.any():
        raise ValueError("PR AUC needs at least one positive label")
    return float(_sk().average_precision_score(y, p))


def _log_loss(s: Scored) -> float:
    assert s.spec is not None and s.proba is not None
    return float(_sk().log_loss(s.y_true, s.proba, labels=list(s.spec.classes)))


def _brier(s: Scored) -> float:
    import numpy as np

    assert s.spec is not None and s.proba is not None
    if s.spec.binary:
        y, p = _positive_scores(s)
        return float(np.mean((p - y.astype(np.float64)) ** 2))
    onehot = np.asarray(s.y_true)[:, None] == s.spec.class_array()[None, :]
    return float(np.mean(np.sum((s.proba - onehot) ** 2, axis=1)))


def _r2(s: Scored) -> float:
    return float(_sk().r2_score(s.y_true, s.y_pred)) if len(s.y_true) > 1 else math.nan


def _rmse(s: Scored) -> float:
    return math.sqrt(float(_sk().mean_squared_error(s.y_true, s.y_pred)))


def _mape(s: Scored) -> float:
    return float(_sk().mean_absolute_percentage_error(s.y_true, s.y_pred))


_DEFS = [
    Metric(
        "mae",
        "regression",
        "mean absolute error",
        True,
        fn=lambda s: float(_sk().mean_absolute_error(s.y_true, s.y_pred)),
    ),
    Metric(
        "mse",
        "regression",
        "mean squared error",
        True,
        fn=lambda s: float(_sk().mean_squared_error(s.y_true, s.y_pred)),
    ),
    Metric("rmse", "regression", "root mean squared error", True, fn=_rmse),
    Metric("r2", "regression", "coefficient of determination", fn=_r2),
    Metric("mape", "regression", "mean absolute percentage error", True, fn=_mape),
    Metric(
        "accuracy",
        "classification",
        "share of correct labels",
        fn=lambda s: float(_sk().accuracy_score(s.y_true, s.y_pred)),
    ),
    Metric(
        "balanced_accuracy",
        "classification",
        "mean recall over the classes",
        fn=lambda s: float(_sk().balanced_accuracy_score(s.y_true, s.y_pred)),
    ),
    Metric("f1", "classification", "F1 of the positive class (binary)", binary_only=True, fn=_binary_avg("f1_score")),
    Metric(
        "precision",
        "classification",
        "precision of the positive class (binary)",
        binary_only=True,
        fn=_binary_avg("precision_score"),
    ),
    Metric(
        "recall",
        "classification",
        "recall of the positive class (binary)",
        binary_only=True,
        fn=_binary_avg("recall_score"),
    ),
    Metric("f1_macro", "classification", "unweighted mean F1 over the classes", fn=_averaged("f1_score", "macro")),
    Metric(
        "f1_weighted",
        "classification",
        "support-weighted mean F1 over the classes",
        fn=_averaged("f1_score", "weighted"),
    ),
    Metric(
        "roc_auc",
        "classification",
        "ROC AUC (binary: positive class; multiclass: one-vs-rest macro)",
        needs_proba=True,
        fn=_roc_auc,
    ),
    Metric(
        "pr_auc",
        "classification",
        "average precision of the positive class (binary)",
        needs_proba=True,
        binary_only=True,
        fn=_pr_auc,
    ),
    Metric(
        "log_loss", "classification", "cross-entropy of the class probabilities", True, needs_proba=True, fn=_log_loss
    ),
    Metric("brier", "classification", "Brier score of the class probabilities", True, needs_proba=True, fn=_brier),
]
METRICS: dict[str, Metric] = {m.name: m for m in _DEFS}
DEFAULTS = {
    "regression": ["mae", "rmse", "r2"],
    "binary": ["roc_auc", "accuracy", "f1", "log_loss"],
    "multiclass": ["accuracy", "f1_macro", "roc_auc", "log_loss"],
}
PRIMARY = {"regression": "mae", "classification": "accuracy"}
LOWER_IS_BETTER = frozenset(m.name for m in _DEFS if m.lower_is_better)


def known(task: str) -> list[str]:
    return [m.name for m in _DEFS if m.task == task]


def lower_is_better(name: str) -> bool:
    return name in LOWER_IS_BETTER


def get(name: str) -> Metric:
    return METRICS[name]


def check_name(name: str, task: str, key: str, file: str, n_classes: int | None = None) -> None:
    """ConfigError naming ``key`` when ``name`` is not a ``task`` metric (or is binary-only on a multiclass model)."""
    m = METRICS.get(name)
    if m is None or m.task != task:
        raise ConfigError(
            f"{file}: {key}: {name!r} is not a {task} metric",
            hint=f"{task} metrics: {', '.join(known(task))}",
        )
    if m.binary_only and n_classes is not None and n_classes > 2:
        raise ConfigError(
            f"{file}: {key}: {name!r} is a binary metric, but the target has {n_classes} classes",
            hint="use f1_macro, f1_weighted, balanced_accuracy, roc_auc (one-vs-rest) or log_loss",
        )


def defaults(spec: LabelSpec) -> list[str]:
    if not spec.is_classifier:
        return list(DEFAULTS["regression"])
    return list(DEFAULTS["binary" if spec.binary else "multiclass"])


def compute(names: list[str], s: Scored) -> dict[str, float]:
    """Each named metric that can be computed on ``s`` (probability metrics need ``s.proba``)."""
    out: dict[str, float] = {}
    if len(s.y_true) == 0:
        return out
    for name in names:
        m = METRICS[name]
        if m.needs_proba and s.proba is None:
            continue
        if m.binary_only and (s.spec is None or not s.spec.binary):
            continue
        assert m.fn is not None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning: NaN is handled below
                value = m.fn(s)
        except ValueError:  # undefined on these rows (one class present, ...)
            continue
        if not math.isnan(value):
            out[name] = value
    return out


def per_class(s: Scored) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, and the confusion matrix (rows: true, columns: predicted)."""
    import numpy as np

    assert s.spec is not None
    classes = list(s.spec.classes)
    skm = _sk()
    p, r, f, n = skm.precision_recall_fscore_support(s.y_true, s.y_pred, labels=classes, zero_division=0)
    cm = skm.confusion_matrix(s.y_true, s.y_pred, labels=classes)
    return {
        "classes": classes,
        "precision": [float(x) for x in p],
        "recall": [float(x) for x in r],
        "f1": [float(x) for x in f],
        "support": [int(x) for x in n],
        "confusion_matrix": np.asarray(cm).astype(int).tolist(),
    }


def describe_table() -> list[tuple[str, str, str, str]]:
    """(name, task, direction, description) for every metric, for the README and `check` hints."""
    return [(m.name, m.task, "lower" if m.lower_is_better else "higher", m.description) for m in _DEFS]
