"""Metrics and the champion/challenger gate.

The gate scores the candidate model version and the current ``@champion`` on the same held-out
rows (both loaded with ``mlflow.pyfunc.load_model`` from the registry), then applies, per metric,
absolute thresholds (``gate.thresholds``) and a minimum improvement over the champion
(``gate.min_improvement``), plus a prediction range / finiteness check. A broken candidate (fails to
load, raises on predict, returns the wrong shape) fails the gate with the reason; it never crashes
the job. The verdict, every metric of both models and each failed rule are recorded as tags on the
candidate's model version and on its run; a passing candidate gets the ``challenger`` alias.
"""

from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from loopline.errors import ConfigError, GateError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from loopline.config import Project

REGRESSION_METRICS = ("mae", "rmse", "r2", "mse")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
DEFAULT_METRICS = {"regression": ["mae", "rmse", "r2"], "classification": ["accuracy", "f1", "roc_auc", "log_loss"]}
LOWER_IS_BETTER = frozenset({"mae", "rmse", "mse", "log_loss"})
TAG = "loopline.gate"


def known_metrics(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def metric_names(project: Project) -> list[str]:
    """The metrics computed in training and in the gate: the configured (or default) ones plus any the gate uses.

    Raises ConfigError naming the key when a metric is unknown for the task.
    """
    cfg = project.config
    task = cfg.model.task
    known = known_metrics(task)
    file = project.config_path.name
    names = list(cfg.training.metrics or DEFAULT_METRICS[task])
    for key, used in (
        ("training.metrics", list(cfg.training.metrics or [])),
        ("gate.thresholds", list(cfg.gate.thresholds)),
        ("gate.min_improvement", list(cfg.gate.min_improvement)),
    ):
        for m in used:
            if m not in known:
                raise ConfigError(
                    f"{file}: {key}.{m} is not a known {task} metric",
                    hint=f"known {task} metrics: {', '.join(known)}",
                )
            if m not in names:
                names.append(m)
    return names


def compute_metrics(
    task: str, names: list[str], y_true: Any, y_pred: Any, proba: np.ndarray | None = None, classes: Any = None
) -> dict[str, float]:
    """Compute each named metric; classification metrics needing probabilities are skipped without them."""
    import numpy as np
    from sklearn import metrics as skm

    out: dict[str, float] = {}
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    for name in names:
        if name == "mae":
            out[name] = float(skm.mean_absolute_error(yt, yp))
        elif name == "mse":
            out[name] = float(skm.mean_squared_error(yt, yp))
        elif name == "rmse":
            out[name] = float(math.sqrt(skm.mean_squared_error(yt, yp)))
        elif name == "r2":
            out[name] = float(skm.r2_score(yt, yp)) if len(yt) > 1 else float("nan")
        elif name == "accuracy":
            out[name] = float(skm.accuracy_score(yt, yp))
        elif name == "f1":
            binary = len(np.unique(np.concatenate([yt.astype(str), yp.astype(str)]))) <= 2
            avg = "binary" if binary and set(np.unique(yt).tolist()) <= {0, 1} else "macro"
            out[name] = float(skm.f1_score(yt, yp, average=avg))
        elif name in ("roc_auc", "log_loss") and proba is not None:
            try:
                if name == "log_loss":
                    out[name] = float(skm.log_loss(yt, proba, labels=classes))
                elif proba.shape[1] == 2:
                    out[name] = float(skm.roc_auc_score(yt, proba[:, 1]))
                else:
                    out[name] = float(skm.roc_auc_score(yt, proba, multi_class="ovr", labels=classes))
            except ValueError:  # a single class in y_true: undefined
                continue
    return out


@dataclass
class GateResult:
    """The gate's verdict on one candidate model version (rendered the same in the CLI and as JSON)."""

    model: str
    candidate_version: str
    champion_version: str | None
    passed: bool
    n_test: int
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    failed_rules: list[str] = field(default_factory=list)
    rules_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, candidate, champion) rows for a table."""
        names = list(dict.fromkeys([*self.candidate_metrics, *self.champion_metrics]))
        return [(m, _fmt(self.candidate_metrics.get(m)), _fmt(self.champion_metrics.get(m))) for m in names]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


# ----------------------------------------------------------------------------- scoring
SMALL_INPUT_ROWS = 20_000


def small_input_threads(rows: int) -> AbstractContextManager[Any]:
    """One native thread (OpenMP/BLAS) for predictions on few rows: starting and synchronising a thread pool
    costs more than it saves there, and on a busy machine OpenMP spin-waiting makes it 5-10x slower."""
    if rows >= SMALL_INPUT_ROWS:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@dataclass
class _Scored:
    predictions: Any = None
    proba: Any = None
    classes: Any = None
    error: str | None = None


def _score(uri: str, X: pd.DataFrame, task: str) -> _Scored:
    """Load a model from the registry and predict; every failure becomes a reason, never an exception."""
    import numpy as np

    from loopline import tracking

    try:
        model = tracking.load_model(uri)
    except Exception as exc:
        return _Scored(error=f"fails to load ({type(exc).__name__}: {_short(exc)})")
    try:
        with small_input_threads(len(X)):
            out: Any = model.predict(X)
    except Exception as exc:
        return _Scored(error=f"raises on predict ({type(exc).__name__}: {_short(exc)})")
    try:
        arr = np.asarray(out.to_numpy() if hasattr(out, "to_numpy") else out)
    except Exception as exc:
        return _Scored(error=f"returns predictions that are not an array ({type(exc).__name__}: {_short(exc)})")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != len(X):
        return _Scored(error=f"returns the wrong output shape: expected ({len(X)},), got {arr.shape}")
    if task == "regression":
        try:
            arr = arr.astype("float64")
        except (TypeError, ValueError):
            return _Scored(error=f"returns non-numeric predictions (dtype {arr.dtype}) for a regression model")
    proba = classes = None
    if task == "classification":
        with small_input_threads(len(X)):
            proba, classes = _probabilities(model, X)
    return _Scored(predictions=arr, proba=proba, classes=classes)


def _probabilities(model: Any, X: pd.DataFrame) -> tuple[Any, Any]:
    """predict_proba of the raw model behind a pyfunc, when it has one."""
    try:
        raw = model.get_raw_model()
        est = getattr(raw, "sklearn_model", raw)
        if hasattr(est, "predict_proba"):
            return est.predict_proba(X), getattr(est, "classes_", None)
    except Exception:
        pass
    return None, None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:limit]


# ----------------------------------------------------------------------------- rules
def _check_predictions(
    preds: Any, task: str, prediction_range: tuple[float, float] | None
) -> tuple[list[str], list[str]]:
    import numpy as np

    checked: list[str] = []
    failed: list[str] = []
    if task != "regression":
        return checked, failed
    checked.append("predictions_finite")
    bad = int((~np.isfinite(preds)).sum())
    if bad:
        failed.append(f"predictions_finite: {bad} of {len(preds)} test predictions are NaN or infinite")
    if prediction_range is not None:
        lo, hi = prediction_range
        checked.append("prediction_range")
        finite = preds[np.isfinite(preds)]
        out = int(((finite < lo) | (finite > hi)).sum())
        if out:
            failed.append(
                f"prediction_range: {out} of {len(preds)} test predictions outside [{lo:g}, {hi:g}] "
                f"(min {finite.min():.6g}, max {finite.max():.6g})"
            )
    return checked, failed


def _threshold_rules(project: Project, cand: dict[str, float]) -> tuple[list[str], list[str]]:
    checked: list[str] = []
    failed: list[str] = []
    for m, th in project.config.gate.thresholds.items():
        checked.append(f"threshold.{m}")
        v = cand.get(m)
        if v is None or math.isnan(v):
            failed.append(f"threshold.{m}: the candidate's {m} could not be computed")
            continue
        if th.min is not None and v < th.min:
            failed.append(f"threshold.{m}: {m} {v:.6g} < min {th.min:g}")
        if th.max is not None and v > th.max:
            failed.append(f"threshold.{m}: {m} {v:.6g} > max {th.max:g}")
    return checked, failed


def _improvement_rules(
    project: Project, cand: dict[str, float], champ: dict[str, float], champ_version: str
) -> tuple[list[str], list[str]]:
    checked: list[str] = []
    failed: list[str] = []
    for m, imp in project.config.gate.min_improvement.items():
        c, b = cand.get(m), champ.get(m)
        checked.append(f"min_improvement.{m}")
        if c is None or b is None or math.isnan(c) or math.isnan(b):
            failed.append(f"min_improvement.{m}: {m} could not be computed for both models")
            continue
        gain = (b - c) if lower_is_better(m) else (c - b)
        way = "lower" if lower_is_better(m) else "higher"
        needed = max(imp.absolute or 0.0, (imp.relative or 0.0) * abs(b))
        if gain < needed:
            failed.append(
                f"min_improvement.{m}: candidate {m} {c:.6g} vs champion v{champ_version} {b:.6g} "
                f"(must be {way} by at least {needed:.6g}, is {way} by {gain:.6g})"
            )
    return checked, failed


# ----------------------------------------------------------------------------- the gate
def gate(
    project: Project, version: str | int, test_df: pd.DataFrame, *, metrics: list[str] | None = None
) -> GateResult:
    """Score candidate ``version`` and the current champion on ``test_df``; record and return the verdict."""
    from loopline import tracking

    cfg = project.config
    task = cfg.model.task
    names = metrics or metric_names(project)
    name = project.registered_model
    version = str(version)
    target = cfg.model.target
    if target not in test_df.columns:
        raise GateError(f"the gate's test rows have no target column {target!r}")
    cols = cfg.model.input_columns([c for c in test_df.columns])
    missing = [c for c in cols if c not in test_df.columns]
    if missing:
        raise GateError(f"the gate's test rows have no model input column(s) {missing}")
    if test_df.empty:
        raise GateError("the gate has no test rows", hint="add rows to the features table or lower training.split.test")
    X, y = test_df[cols], test_df[target]

    champion = tracking.alias_version(project, tracking.CHAMPION)
    champ_version = str(champion.version) if champion is not None else None
    result = GateResult(
        model=name, candidate_version=version, champion_version=champ_version, passed=False, n_test=len(test_df)
    )

    cand = _score(f"models:/{name}/{version}", X, task)
    result.rules_checked.append("candidate_scores")
    if cand.error is not None:
        result.failed_rules.append(f"candidate_scores: the candidate {cand.error}")
    else:
        checked, failed = _check_predictions(cand.predictions, task, cfg.gate.prediction_range)
        result.rules_checked += checked
        result.failed_rules += failed
        try:
            result.candidate_metrics = compute_metrics(task, names, y, cand.predictions, cand.proba, cand.classes)
        except Exception as exc:
            why = f"{type(exc).__name__}: {_short(exc)}"
            result.failed_rules.append(f"candidate_metrics: cannot compute metrics ({why})")
        checked, failed = _threshold_rules(project, result.candidate_metrics)
        result.rules_checked += checked
        result.failed_rules += failed

    if champ_version is not None and champ_version != version:
        champ = _score(f"models:/{name}/{champ_version}", X, task)
        if champ.error is not None:
            result.notes.append(f"champion v{champ_version} {champ.error}; only absolute thresholds applied")
        else:
            try:
                result.champion_metrics = compute_metrics(task, names, y, champ.predictions, champ.proba, champ.classes)
            except Exception as exc:
                result.notes.append(f"champion v{champ_version} metrics failed ({type(exc).__name__}: {_short(exc)})")
            if cand.error is None and result.champion_metrics:
                checked, failed = _improvement_rules(
                    project, result.candidate_metrics, result.champion_metrics, champ_version
                )
                result.rules_checked += checked
                result.failed_rules += failed
    elif champ_version is None:
        result.notes.append("no champion yet: only absolute thresholds applied")

    result.passed = not result.failed_rules
    record(project, result)
    return result


def record(project: Project, result: GateResult) -> None:
    """Write the verdict to the model version (tags), its run (tags + metrics), and move ``challenger``."""
    from mlflow.exceptions import MlflowException

    from loopline import tracking

    c = tracking.client(project)
    name, version = result.model, result.candidate_version
    tags = {
        f"{TAG}.verdict": result.verdict,
        f"{TAG}.failed_rules": json.dumps(result.failed_rules),
        f"{TAG}.champion_version": result.champion_version or "",
        **{f"{TAG}.candidate.{m}": repr(v) for m, v in result.candidate_metrics.items()},
        **{f"{TAG}.champion.{m}": repr(v) for m, v in result.champion_metrics.items()},
    }
    try:
        mv = c.get_model_version(name, version)
        for k, v in tags.items():
            c.set_model_version_tag(name, version, k, v)
        if mv.run_id:
            from mlflow.entities import Metric, RunTag

            now = _now_ms()
            metrics = [
                Metric(f"gate_candidate_{m}", v, now, 0)
                for m, v in result.candidate_metrics.items()
                if not math.isnan(v)
            ]
            metrics += [
                Metric(f"gate_champion_{m}", v, now, 0) for m, v in result.champion_metrics.items() if not math.isnan(v)
            ]
            c.log_batch(mv.run_id, metrics=metrics, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
        if result.passed:
            c.set_registered_model_alias(name, tracking.CHALLENGER, version)
    except MlflowException as exc:
        raise GateError(f"cannot record the gate verdict on {name} version {version}: {exc.message}") from None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
