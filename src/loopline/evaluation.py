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

import numpy as np

from loopline import metrics as metric_registry
from loopline.errors import GateError
from loopline.metrics import LOWER_IS_BETTER, Scored, lower_is_better

if TYPE_CHECKING:
    import pandas as pd

    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.runtime import Output

__all__ = ["LOWER_IS_BETTER", "GateResult", "compute_metrics", "gate", "lower_is_better", "metric_names"]
TAG = "loopline.gate"


def metric_names(project: Project, spec: LabelSpec) -> list[str]:
    """The metrics computed in training and in the gate: the configured (or default) ones plus any the gate uses.

    Raises ConfigError naming the key when a metric does not fit the task (or is binary-only on a multiclass model).
    """
    cfg = project.config
    task = cfg.model.task
    file = project.config_path.name
    n_classes = len(spec.classes) if spec.is_classifier else None
    names = list(cfg.training.metrics or metric_registry.defaults(spec))
    for key, used in (
        ("training.metrics", list(cfg.training.metrics or [])),
        ("gate.thresholds", list(cfg.gate.thresholds)),
        ("gate.min_improvement", list(cfg.gate.min_improvement)),
    ):
        for m in used:
            metric_registry.check_name(m, task, f"{key}.{m}", file, n_classes)
            if m not in names:
                names.append(m)
    return names


def compute_metrics(names: list[str], y_true: Any, out: Output, spec: LabelSpec) -> dict[str, float]:
    """The named metrics of predictions ``out`` against ``y_true`` (metrics needing probabilities are skipped
    when ``out`` has none)."""
    from loopline.runtime import typed_labels

    y = np.asarray(y_true)
    y = typed_labels(y, spec) if spec.is_classifier else y.astype(np.float64)
    return metric_registry.compute(names, Scored(y, out.predictions, out.proba, spec))


def per_class(y_true: Any, out: Output, spec: LabelSpec) -> dict[str, Any]:
    """Precision / recall / F1 / support per class and the confusion matrix ({} for regression)."""
    from loopline.runtime import typed_labels

    if not spec.is_classifier or not spec.classes:
        return {}
    return metric_registry.per_class(Scored(typed_labels(np.asarray(y_true), spec), out.predictions, out.proba, spec))


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
    candidate_per_class: dict[str, Any] = field(default_factory=dict)
    champion_per_class: dict[str, Any] = field(default_factory=dict)
    floor_breaches: list[str] = field(default_factory=list)  # floors missed by a candidate that beat the champion

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
    output: Output | None = None
    spec: LabelSpec | None = None
    error: str | None = None


def _score(project: Project, uri: str, X: pd.DataFrame, fallback: LabelSpec) -> _Scored:
    """Load a model from the registry and predict (labels and probabilities); every failure becomes a reason."""
    from loopline import runtime
    from loopline.context import context

    try:
        rt = runtime.load(uri, fallback, ctx=context(project))
    except runtime.RuntimeLoadError as exc:
        cause = exc.__cause__ or exc
        return _Scored(error=f"fails to load ({type(cause).__name__}: {_short(cause)})")
    try:
        with small_input_threads(len(X)):
            out = rt.predict_frame(X)
    except runtime.OutputShapeError as exc:
        return _Scored(error=f"returns the wrong output shape: expected ({exc.n},), got {exc.got}")
    except runtime.NonNumericOutput as exc:
        return _Scored(error=f"returns non-numeric predictions for a regression model ({_short(exc)})")
    except Exception as exc:
        return _Scored(error=f"raises on predict ({type(exc).__name__}: {_short(exc)})")
    return _Scored(output=out, spec=rt.spec)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:limit]


# ----------------------------------------------------------------------------- rules
def _check_predictions(
    out: Output, spec: LabelSpec, prediction_range: tuple[float, float] | None
) -> tuple[list[str], list[str]]:
    """Regression: finite predictions inside ``gate.prediction_range``; classifiers: finite probabilities,
    the ``probability`` column inside the range."""
    checked: list[str] = []
    failed: list[str] = []
    if spec.is_classifier:
        if out.proba is None:
            return checked, failed
        values = spec.score(out.predictions, out.proba)
        what = "probabilities"
    else:
        values = out.predictions
        what = "predictions"
    checked.append("predictions_finite")
    bad = int((~np.isfinite(values)).sum())
    if bad:
        failed.append(f"predictions_finite: {bad} of {len(values)} test {what} are NaN or infinite")
    if prediction_range is not None:
        lo, hi = prediction_range
        checked.append("prediction_range")
        finite = values[np.isfinite(values)]
        n_out = int(((finite < lo) | (finite > hi)).sum())
        if n_out:
            failed.append(
                f"prediction_range: {n_out} of {len(values)} test {what} outside [{lo:g}, {hi:g}] "
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
    project: Project, names: list[str], cand: dict[str, float], champ: dict[str, float], champ_version: str
) -> tuple[list[str], list[str]]:
    """``not_worse.<first metric>`` (``gate.not_worse``) and ``min_improvement.<m>``, on the same rows."""
    rules: list[tuple[str, str, float, float]] = []  # (rule, metric, absolute, relative)
    if project.config.gate.not_worse and names and names[0] not in project.config.gate.min_improvement:
        rules.append((f"not_worse.{names[0]}", names[0], 0.0, 0.0))
    for m, imp in project.config.gate.min_improvement.items():
        rules.append((f"min_improvement.{m}", m, imp.absolute or 0.0, imp.relative or 0.0))
    checked: list[str] = []
    failed: list[str] = []
    for rule, m, absolute, relative in rules:
        c, b = cand.get(m), champ.get(m)
        checked.append(rule)
        if c is None or b is None or math.isnan(c) or math.isnan(b):
            failed.append(f"{rule}: {m} could not be computed for both models")
            continue
        gain = (b - c) if lower_is_better(m) else (c - b)
        needed = max(absolute, relative * abs(b))
        if gain >= needed:
            continue
        way = "lower" if lower_is_better(m) else "higher"
        if gain < 0:
            told = f"candidate {m} {c:.6g} is worse than champion v{champ_version}'s {b:.6g} by {-gain:.6g}"
        elif gain == 0:
            told = f"candidate {m} {c:.6g} ties champion v{champ_version}"
        else:
            told = f"candidate {m} {c:.6g} beats champion v{champ_version}'s {b:.6g} by only {gain:.6g}"
        need = f"must be {way} by at least {needed:.6g}" if needed > 0 else "must not be worse"
        failed.append(f"{rule}: {told} ({need})")
    return checked, failed


def _floors_beaten(
    failed: list[str], cand: dict[str, float], champ: dict[str, float], champ_version: str | None
) -> tuple[list[str], list[str]]:
    """Absolute floors (``threshold.<m>``) the candidate misses but the champion misses worse on the same
    rows: never keep a worse champion because of a floor. Returns (still failed, breaches promoted anyway)."""
    kept: list[str] = []
    breaches: list[str] = []
    for rule in failed:
        m = rule.split(":", 1)[0].removeprefix("threshold.")
        c, b = cand.get(m), champ.get(m)
        if champ_version is None or c is None or b is None or math.isnan(c) or math.isnan(b):
            kept.append(rule)
            continue
        at_least_as_good = c <= b if lower_is_better(m) else c >= b
        if at_least_as_good:
            breaches.append(f"{rule} (champion v{champ_version} is at {b:.6g} on the same rows: the better model wins)")
        else:
            kept.append(rule)
    return kept, breaches


# ----------------------------------------------------------------------------- the gate
def gate(
    project: Project,
    version: str | int,
    test_df: pd.DataFrame,
    *,
    metrics: list[str] | None = None,
    candidate: Output | None = None,
) -> GateResult:
    """Judge candidate ``version`` against the current champion on ``test_df``; record and return the verdict.

    ``candidate``: the evaluated candidate's predictions on ``test_df`` when the registered version is a
    refit that trained on those rows: its metrics are the evidence, and the registered version is only
    checked to load, predict and stay in range."""
    from loopline import tracking
    from loopline.labels import from_config

    cfg = project.config
    name = project.registered_model
    version = str(version)
    target = cfg.model.target
    if target not in test_df.columns:
        raise GateError(f"the gate's test rows have no target column {target!r}")
    cols = cfg.model.input_columns([c for c in test_df.columns])
    missing = [c for c in cols if c not in test_df.columns]
    if missing:
        raise GateError(f"the gate's test rows have no model input column(s) {missing}")
    labelled = test_df[target].notna().to_numpy()
    if candidate is not None and not labelled.all():
        raise GateError("the evaluated candidate's test rows must all be labelled")
    test_df = test_df[labelled]
    if test_df.empty:
        raise GateError(
            "the gate has no labelled test rows", hint="add rows to the features table or lower training.split.test"
        )
    X, y = test_df[cols], test_df[target].to_numpy()

    champion = tracking.alias_version(project, tracking.CHAMPION)
    champ_version = str(champion.version) if champion is not None else None
    result = GateResult(
        model=name, candidate_version=version, champion_version=champ_version, passed=False, n_test=len(test_df)
    )
    fallback = from_config(cfg.model)
    cand = _score(project, f"models:/{name}/{version}", X, fallback)
    spec = cand.spec or fallback
    names = metrics or metric_names(project, spec)
    result.rules_checked.append("candidate_scores")
    floors: list[str] = []
    if cand.error is not None:
        result.failed_rules.append(f"candidate_scores: the candidate {cand.error}")
    else:
        assert cand.output is not None
        checked, failed = _check_predictions(cand.output, spec, cfg.gate.prediction_range)
        result.rules_checked += checked
        result.failed_rules += failed
        evidence = candidate if candidate is not None else cand.output
        if candidate is not None:
            result.notes.append(
                f"metrics of the evaluated candidate (trained without these {len(test_df)} rows); registered "
                f"v{version} is its refit on every labelled row"
            )
        try:
            result.candidate_metrics = compute_metrics(names, y, evidence, spec)
            result.candidate_per_class = per_class(y, evidence, spec)
        except Exception as exc:
            why = f"{type(exc).__name__}: {_short(exc)}"
            result.failed_rules.append(f"candidate_metrics: cannot compute metrics ({why})")
        checked, floors = _threshold_rules(project, result.candidate_metrics)
        result.rules_checked += checked

    if champ_version is not None and champ_version != version:
        champ = _score(project, f"models:/{name}/{champ_version}", X, fallback)
        if champ.error is not None:
            result.notes.append(f"champion v{champ_version} {champ.error}; only absolute thresholds applied")
        else:
            assert champ.output is not None and champ.spec is not None
            try:
                result.champion_metrics = compute_metrics(names, y, champ.output, champ.spec)
                result.champion_per_class = per_class(y, champ.output, champ.spec)
            except Exception as exc:
                result.notes.append(f"champion v{champ_version} metrics failed ({type(exc).__name__}: {_short(exc)})")
            if cand.error is None and result.champion_metrics:
                checked, failed = _improvement_rules(
                    project, names, result.candidate_metrics, result.champion_metrics, champ_version
                )
                result.rules_checked += checked
                result.failed_rules += failed
                floors, result.floor_breaches = _floors_beaten(
                    floors, result.candidate_metrics, result.champion_metrics, champ_version
                )
    elif champ_version is None:
        result.notes.append("no champion yet: only absolute thresholds applied")
    result.failed_rules += floors

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
    if result.floor_breaches:
        tags[f"{TAG}.floor_breaches"] = json.dumps(result.floor_breaches)
    if result.candidate_per_class:
        tags[f"{TAG}.per_class"] = json.dumps(result.candidate_per_class, separators=(",", ":"), default=str)[:5000]
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
            metrics += _per_class_metrics(result.candidate_per_class, now)
            c.log_batch(mv.run_id, metrics=metrics, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
            if result.candidate_per_class or result.champion_per_class:
                report = {"candidate": result.candidate_per_class, "champion": result.champion_per_class}
                c.log_dict(mv.run_id, report, "gate/per_class.json")
        if result.passed:
            c.set_registered_model_alias(name, tracking.CHALLENGER, version)
    except MlflowException as exc:
        raise GateError(f"cannot record the gate verdict on {name} version {version}: {exc.message}") from None


def _per_class_metrics(report: dict[str, Any], now: int) -> list[Any]:
    """``gate_candidate_<precision|recall|f1>.<class>`` metrics (class names made MLflow-safe)."""
    import re

    from mlflow.entities import Metric

    out = []
    for i, cls in enumerate(report.get("classes", [])):
        safe = re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(cls))[:100] or "_"
        for m in ("precision", "recall", "f1"):
            out.append(Metric(f"gate_candidate_{m}.{safe}", float(report[m][i]), now, 0))
    return out


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
