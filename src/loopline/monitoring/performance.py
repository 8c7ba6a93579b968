"""Model performance on labelled production traffic, and the prediction range check.

Feedback labels are joined to the predictions made in the window: ``inference_log`` rows by
``request_id``, ``predictions`` rows by ``model.keys`` (the latest label per id / key wins). The
metrics are compared with the champion's gate-time ``test_<metric>`` metrics: a breach is the
watched metric (``monitoring.performance.metric``, default ``mae`` / ``accuracy``) worse by more than
``max_degradation`` (relative). Every other metric is recorded with its own verdict, for information.

Classification metrics are ``accuracy`` and ``f1`` (macro average): the logged prediction is a label,
so ``roc_auc`` and ``log_loss`` (which need probabilities) are not computed from production traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from loopline.errors import MonitoringError
from loopline.metrics import LOWER_IS_BETTER

if TYPE_CHECKING:
    from datetime import datetime

    from loopline.config import Project
    from loopline.tables import DeltaStore

Verdict = Literal["ok", "breach", "no_data"]
# Label metrics: the gate's own definitions, so monitoring compares like with like. Probability
# metrics (roc_auc, log_loss) need probabilities the prediction tables do not hold.
REGRESSION_METRICS = ("mae", "rmse", "r2")
CLASSIFICATION_METRICS = ("accuracy", "f1")
PRIMARY = {"regression": "mae", "classification": "accuracy"}


def compute_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE / RMSE / R2 for regression; accuracy / F1 for classification (labels compared as text)."""
    if len(y_true) == 0:
        return {}
    from loopline import metrics
    from loopline.labels import spec_for

    if task == "regression":
        t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        return metrics.compute(list(REGRESSION_METRICS), metrics.Scored(t, p, None, spec_for(task, "float")))
    t_s = np.asarray([str(x) for x in y_true], dtype=object)
    p_s = np.asarray([str(x) for x in y_pred], dtype=object)
    spec = spec_for(task, "str", sorted(set(t_s.tolist()) | set(p_s.tolist())))
    return metrics.compute(["accuracy", "f1_macro"], metrics.Scored(t_s, p_s, None, spec)) | {}


def limit_for(metric: str, baseline: float, max_degradation: float) -> float:
    """The worst acceptable value: baseline worsened by ``max_degradation`` of its magnitude."""
    slack = max_degradation * abs(baseline)
    return baseline + slack if metric in LOWER_IS_BETTER else baseline - slack


def is_breach(metric: str, value: float, limit: float) -> bool:
    if not (math.isfinite(value) and math.isfinite(limit)):
        return False
    return value > limit if metric in LOWER_IS_BETTER else value < limit


@dataclass(frozen=True)
class MetricCheck:
    metric: str
    value: float
    baseline: float | None
    threshold: float
    verdict: Verdict
    n: int
    slice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def f(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else x

        return {
            "metric": self.metric,
            "slice": self.slice,
            "value": f(self.value),
            "baseline": f(self.baseline),
            "threshold": f(self.threshold),
            "verdict": self.verdict,
            "n": self.n,
        }


@dataclass(frozen=True)
class PerformanceResult:
    metric: str
    verdict: Verdict
    n_labelled: int
    message: str
    checks: list[MetricCheck] = field(default_factory=list)

    @property
    def watched(self) -> MetricCheck | None:
        return next((c for c in self.checks if c.metric == self.metric and c.slice is None), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "n_labelled": self.n_labelled,
            "message": self.message,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class RangeResult:
    share: float
    threshold: float
    n: int
    n_out: int
    verdict: Verdict
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": None if not math.isfinite(self.share) else self.share,
            "threshold": self.threshold,
            "n": self.n,
            "n_out": self.n_out,
            "verdict": self.verdict,
            "message": self.message,
        }


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def labelled_rows(
    project: Project, store: DeltaStore, start: datetime, end: datetime, slices: Sequence[str]
) -> pa.Table:
    """``prediction``, ``label`` and the slice columns of every labelled prediction made in the window."""
    cfg = project.config
    src = cfg.monitoring.source
    if not store.exists("feedback"):
        return pa.table({"prediction": pa.array([], pa.string()), "label": pa.array([], pa.string())})
    fb_cols = store.schema("feedback").names
    names = ["feedback"]
    parts: list[str] = []
    slice_sel = lambda alias, cols: "".join(  # noqa: E731
        f", {alias}.{_q(s)} AS {_q(s)}" if s in cols else f", NULL AS {_q(s)}" for s in slices
    )
    if src in ("inference_log", "both") and store.exists("inference_log") and "request_id" in fb_cols:
        log_cols = store.schema("inference_log").names
        names.append("inference_log")
        ok = " AND l.status < 400" if "status" in log_cols else ""
        parts.append(
            "SELECT CAST(l.prediction AS VARCHAR) AS prediction, CAST(fb.label AS VARCHAR) AS label"
            f"{slice_sel('l', log_cols)} FROM inference_log l JOIN ("
            "  SELECT request_id, label, row_number() OVER (PARTITION BY request_id ORDER BY received_at DESC) AS rn"
            "  FROM feedback WHERE request_id IS NOT NULL) fb ON fb.request_id = l.request_id AND fb.rn = 1"
            f" WHERE l.timestamp >= {_ts(start)} AND l.timestamp < {_ts(end)}{ok}"
        )
    keys = list(cfg.model.keys)
    if src in ("batch", "both") and keys and store.exists("predictions") and all(k in fb_cols for k in keys):
        pred_cols = store.schema("predictions").names
        names.append("predictions")
        on = " AND ".join(f"fb.{_q(k)} = p.{_q(k)}" for k in keys)
        part = ", ".join(f"{_q(k)}" for k in keys)
        not_null = " AND ".join(f"{_q(k)} IS NOT NULL" for k in keys)
        join_features = ""
        need = [s for s in slices if s not in pred_cols]
        sel = slice_sel("p", pred_cols)
        if need and store.exists("features"):
            feat_cols = store.schema("features").names
            names.append("features")
            fon = " AND ".join(f"f.{_q(k)} = p.{_q(k)}" for k in keys)
            batch_on = " AND f._batch_id = p._batch_id" if "_batch_id" in feat_cols and "_batch_id" in pred_cols else ""
            join_features = f" LEFT JOIN features f ON {fon}{batch_on}"
            sel = "".join(
                f", p.{_q(s)} AS {_q(s)}"
                if s in pred_cols
                else f", f.{_q(s)} AS {_q(s)}"
                if s in feat_cols
                else f", NULL AS {_q(s)}"
                for s in slices
            )
        parts.append(
            "SELECT CAST(p.prediction AS VARCHAR) AS prediction, CAST(fb.label AS VARCHAR) AS label"
            f"{sel} FROM predictions p JOIN ("
            f"  SELECT *, row_number() OVER (PARTITION BY {part} ORDER BY received_at DESC) AS rn"
            f"  FROM feedback WHERE {not_null}) fb ON {on} AND fb.rn = 1{join_features}"
            f" WHERE p.scored_at >= {_ts(start)} AND p.scored_at < {_ts(end)}"
        )
    if not parts:
        return pa.table({"prediction": pa.array([], pa.string()), "label": pa.array([], pa.string())})
    con = store.sql(names)
    try:
        return con.sql(" UNION ALL BY NAME ".join(f"({p})" for p in parts)).to_arrow_table()
    except Exception as exc:
        raise MonitoringError(f"joining predictions with feedback labels failed: {exc}") from exc
    finally:
        con.close()


def evaluate_performance(
    project: Project,
    store: DeltaStore,
    start: datetime,
    end: datetime,
    baselines: dict[str, float],
) -> PerformanceResult:
    """Metrics of the labelled predictions in the window vs the gate-time ``test_<m>`` metrics."""
    cfg = project.config
    task = cfg.model.task
    mon = cfg.monitoring
    allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    metric = mon.performance.metric or PRIMARY[task]
    if metric not in allowed:
        raise MonitoringError(
            f"monitoring.performance.metric must be one of {', '.join(allowed)} for a {task} model; got {metric!r}",
            hint="roc_auc and log_loss need probabilities, which predictions do not carry",
        )
    rows = labelled_rows(project, store, start, end, mon.slices)
    n = rows.num_rows
    if n == 0:
        return PerformanceResult(metric, "no_data", 0, "no feedback labels for predictions made in the window")
    labels = rows.column("label").to_numpy(zero_copy_only=False)
    preds = rows.column("prediction").to_numpy(zero_copy_only=False)
    if task == "regression":
        try:
            labels, preds = labels.astype(np.float64), preds.astype(np.float64)
        except (TypeError, ValueError):
            raise MonitoringError("feedback labels of a regression model must be numbers") from None
    checks = _checks(task, labels, preds, baselines, mon.performance.max_degradation, None)
    for col in mon.slices:
        values = rows.column(col).to_pylist()
        for v in sorted({x for x in values if x is not None}, key=str):
            mask = np.array([x == v for x in values])
            checks += _checks(task, labels[mask], preds[mask], baselines, mon.performance.max_degradation, f"{col}={v}")
    watched = next(c for c in checks if c.metric == metric and c.slice is None)
    base = f"{watched.baseline:.4g}" if watched.baseline is not None else "none"
    msg = (
        f"{metric} {watched.value:.4g} on {n} labelled predictions"
        f" (gate-time test {base}, limit {watched.threshold:.4g})"
    )
    return PerformanceResult(metric, watched.verdict, n, msg, checks)


def _checks(
    task: str,
    labels: np.ndarray,
    preds: np.ndarray,
    baselines: dict[str, float],
    max_degradation: float,
    slice_: str | None,
) -> list[MetricCheck]:
    out = []
    for m, value in compute_metrics(task, labels, preds).items():
        base = baselines.get(m)
        if base is None or not math.isfinite(base):
            out.append(MetricCheck(m, value, None, math.nan, "ok", len(labels), slice_))
            continue
        limit = limit_for(m, base, max_degradation)
        verdict: Verdict = "breach" if is_breach(m, value, limit) else "ok"
        out.append(MetricCheck(m, value, base, limit, verdict, len(labels), slice_))
    return out


def check_range(project: Project, store: DeltaStore, start: datetime, end: datetime) -> RangeResult | None:
    """Share of predictions in the window outside ``gate.prediction_range`` (None when not checkable)."""
    cfg = project.config
    limit = cfg.monitoring.max_range_violation_rate
    rng = cfg.gate.prediction_range
    src = cfg.monitoring.source
    parts: list[str] = []
    names: list[str] = []
    if src in ("batch", "both") and store.exists("predictions"):
        cols = store.schema("predictions").names
        if "out_of_range" in cols:
            names.append("predictions")
            parts.append(
                "SELECT count(*) AS n, count(*) FILTER (WHERE out_of_range) AS n_out FROM predictions"
                f" WHERE scored_at >= {_ts(start)} AND scored_at < {_ts(end)}"
            )
    if src in ("inference_log", "both") and store.exists("inference_log") and rng and cfg.model.task == "regression":
        cols = store.schema("inference_log").names
        names.append("inference_log")
        ok = " AND status < 400" if "status" in cols else ""
        parts.append(
            "SELECT count(*) AS n, count(*) FILTER (WHERE CAST(prediction AS DOUBLE) < "
            f"{float(rng[0])!r} OR CAST(prediction AS DOUBLE) > {float(rng[1])!r}) AS n_out FROM inference_log"
            f" WHERE timestamp >= {_ts(start)} AND timestamp < {_ts(end)} AND prediction IS NOT NULL{ok}"
        )
    if not parts:
        return None
    con = store.sql(names)
    try:
        got = con.sql(" UNION ALL ".join(parts)).fetchall()
    except Exception as exc:
        raise MonitoringError(f"range check failed: {exc}") from exc
    finally:
        con.close()
    n = int(sum(r[0] for r in got))
    n_out = int(sum(r[1] for r in got))
    if n == 0:
        return RangeResult(math.nan, limit, 0, 0, "no_data", "no predictions in the window")
    share = n_out / n
    verdict: Verdict = "breach" if share > limit else "ok"
    return RangeResult(
        share, limit, n, n_out, verdict, f"{n_out} of {n} predictions out of range ({share:.2%}, limit {limit:.2%})"
    )
