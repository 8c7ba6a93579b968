"""Model performance on labelled production traffic, and the prediction range check.

Feedback labels are joined to the predictions made in the window: ``inference_log`` rows by
``request_id``, ``predictions`` rows by ``model.keys`` (the latest label per id / key wins). Values
keep their types: ``prediction`` and ``label`` are read as stored (the target's own type; older
tables hold them as text) and parsed with the champion's label contract (:class:`LabelSpec`), so
``1``, ``"1"`` and ``1.0`` are the same int label and ``True`` / ``"true"`` the same bool label.
A label that is not one of the model's classes is left out and reported.

Metrics come from :mod:`loopline.metrics`, the registry the gate uses, with the champion's spec (its
positive class for binary metrics): on the same rows monitoring and the gate give the same value.
Metrics that need probabilities (``roc_auc``, ``log_loss``, ``brier``, ``pr_auc``) use the
``probabilities`` map column (every class) or, for a binary model, the ``probability`` column
(P(positive)); when some labelled row lacks them the metric is skipped with a note.

The metrics are compared with the champion's gate-time ``test_<metric>`` metrics: a breach is the
watched metric (``monitoring.performance.metric``, default :data:`loopline.metrics.PRIMARY`) worse by
more than ``max_degradation`` (relative). Every other metric, every slice and every class (precision,
recall, F1 vs the gate's per-class view) is recorded with its own verdict, for information.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopline import metrics as registry
from loopline.errors import MonitoringError
from loopline.labels import LabelSpec, LabelValueError, kind_of_arrow, spec_for
from loopline.metrics import LOWER_IS_BETTER, PRIMARY

if TYPE_CHECKING:
    from datetime import datetime

    from loopline.config import Project
    from loopline.tables import DeltaStore

__all__ = [
    "PRIMARY",
    "ClassCheck",
    "Labelled",
    "MetricCheck",
    "PerformanceResult",
    "RangeResult",
    "check_range",
    "compute_metrics",
    "evaluate_performance",
    "is_breach",
    "label_text",
    "labelled_rows",
    "limit_for",
    "probability_matrix",
    "typed_values",
]

Verdict = Literal["ok", "breach", "no_data"]
PER_CLASS = ("precision", "recall", "f1")
CLASS_SLICE = "class="
MAX_SHOWN = 5


# ----------------------------------------------------------------------------- typed values
def label_text(value: Any) -> str:
    """A label as text, the same way everywhere (monitoring rows, drift categories): booleans ``true``/``false``."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _dtype(spec: LabelSpec) -> Any:
    return {"int": np.int64, "bool": np.bool_, "float": np.float64}.get(spec.kind, object)


def _combine(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


NONFINITE = "not finite"  # the key of typed_values' counts of NaN / infinite numbers


def typed_values(
    col: pa.Array | pa.ChunkedArray, spec: LabelSpec, *, check_classes: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A column of labels (or predictions) in the spec's type, whatever type it was stored as.

    Returns ``(values, valid, bad)``: the values as a NumPy array of the target's dtype (int64, bool,
    float64 or object for text), the mask of rows that hold a label (not null, parsed, and with
    ``check_classes`` one of the model's classes), and ``{repr(value): rows}`` of the values that did
    not parse. Each distinct value is parsed once (``LabelSpec.parse``)."""
    arr = _combine(col)
    n = len(arr)
    dtype = _dtype(spec)
    if n == 0 or pa.types.is_null(arr.type):
        return np.zeros(n, dtype=dtype), np.zeros(n, dtype=bool), {}
    if spec.kind == "float" and (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        values = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        valid = np.asarray(arr.is_valid())
        finite = np.isfinite(values)
        nonfinite = {NONFINITE: int((valid & ~finite).sum())} if not finite[valid].all() else {}
        return values, valid & finite, nonfinite  # an infinite (or NaN) label or prediction: left out, counted
    parser = spec if check_classes else dataclasses.replace(spec, classes=())
    enc = pc.dictionary_encode(arr)
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.intp)
    parsed: list[Any] = []
    ok: list[bool] = []
    for v in enc.dictionary.to_pylist():
        try:
            parsed.append(parser.parse(v))
            ok.append(True)
        except LabelValueError:
            parsed.append(None)
            ok.append(False)
    fill = spec.classes[0] if spec.classes else {"int": 0, "bool": False, "float": 0.0}.get(spec.kind, "")
    table = np.empty(len(parsed), dtype=dtype)
    for i, v in enumerate(parsed):
        table[i] = fill if v is None else v
    okay = np.asarray(ok, dtype=bool)
    has = idx >= 0
    safe = np.where(has, idx, 0)
    if not len(parsed):
        return np.zeros(n, dtype=dtype), np.zeros(n, dtype=bool), {}
    values = table[safe]
    valid = has & okay[safe]
    bad: dict[str, int] = {}
    if not okay.all():
        counts = np.bincount(idx[has], minlength=len(parsed))
        dictionary = enc.dictionary.to_pylist()
        for j in np.nonzero(~okay)[0].tolist():
            bad[repr(dictionary[j])] = int(counts[j])
    return values, valid, bad


def probability_matrix(
    probabilities: pa.Array | pa.ChunkedArray | None, probability: pa.Array | pa.ChunkedArray | None, spec: LabelSpec
) -> np.ndarray | None:
    """``(n, len(spec.classes))`` class probabilities in the champion's class order, NaN where a row lacks one.

    From the ``probabilities`` map (every class; keys parsed with the spec); for a binary model whose
    map is absent or incomplete, from ``probability`` (P(positive)). None when neither column exists."""
    k = len(spec.classes)
    if not spec.is_classifier or k == 0:
        return None
    mat: np.ndarray | None = None
    if probabilities is not None:
        arr = _combine(probabilities)
        if pa.types.is_map(arr.type):
            n = len(arr)
            mat = np.full((n, k), np.nan)
            offsets = arr.offsets.to_numpy(zero_copy_only=False)
            start, stop = int(offsets[0]), int(offsets[-1])
            keys, key_ok, _ = typed_values(arr.keys.slice(start, stop - start), spec)
            items = pc.cast(arr.items.slice(start, stop - start), pa.float64()).to_numpy(zero_copy_only=False)
            index = {c: i for i, c in enumerate(spec.classes)}
            col = np.fromiter(
                (index.get(v, -1) if good else -1 for v, good in zip(keys.tolist(), key_ok.tolist(), strict=True)),
                dtype=np.intp,
                count=len(keys),
            )
            rows = np.repeat(np.arange(n), np.diff(offsets))
            hit = col >= 0
            mat[rows[hit], col[hit]] = items[hit]
            if arr.null_count:
                mat[~np.asarray(arr.is_valid())] = np.nan
    if spec.binary and probability is not None:
        p = pc.cast(_combine(probability), pa.float64()).to_numpy(zero_copy_only=False)
        pos = spec.positive_index()
        binary = np.column_stack([1.0 - p, p]) if pos == 1 else np.column_stack([p, 1.0 - p])
        if mat is None:
            mat = binary
        else:
            missing = np.isnan(mat).any(axis=1)
            mat[missing] = binary[missing]
    return mat


# ----------------------------------------------------------------------------- metrics
def metric_names(spec: LabelSpec, watched: str, baselines: dict[str, float] | None = None) -> list[str]:
    """The watched metric, the task's defaults and every gate-time metric of the task (binary-only ones only
    for a binary model)."""
    task = "classification" if spec.is_classifier else "regression"
    known = registry.known(task)
    names = [watched, *registry.defaults(spec), *(m for m in (baselines or {}) if m in known)]
    out = []
    for m in dict.fromkeys(names):
        if m in known and not (registry.get(m).binary_only and spec.is_classifier and not spec.binary):
            out.append(m)
    return out


def compute_metrics(
    task: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    spec: LabelSpec | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """The task's metrics (default: the registry's defaults for the spec) through :mod:`loopline.metrics`.

    Without a spec the classes are those seen in ``y_true`` and ``y_pred`` (sorted; the second is the
    positive class of a binary problem, as in scikit-learn)."""
    if len(y_true) == 0:
        return {}
    if spec is None:
        if task == "regression":
            spec = LabelSpec("regression", "float")
        else:
            values = np.concatenate([np.asarray(y_true), np.asarray(y_pred)])
            arr = pa.array(values.tolist())
            spec = spec_for(task, kind_of_arrow(arr.type, task), np.unique(values).tolist())
    if not spec.is_classifier:
        y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    wanted = list(names) if names is not None else registry.defaults(spec)
    return registry.compute(wanted, registry.Scored(y_true, y_pred, proba, spec))


def limit_for(metric: str, baseline: float, max_degradation: float) -> float:
    """The worst acceptable value: baseline worsened by ``max_degradation`` of its magnitude."""
    slack = max_degradation * abs(baseline)
    return baseline + slack if metric in LOWER_IS_BETTER else baseline - slack


def is_breach(metric: str, value: float, limit: float) -> bool:
    if not (math.isfinite(value) and math.isfinite(limit)):
        return False
    return value > limit if metric in LOWER_IS_BETTER else value < limit


def _f(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


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
        return {
            "metric": self.metric,
            "slice": self.slice,
            "value": _f(self.value),
            "baseline": _f(self.baseline),
            "threshold": _f(self.threshold),
            "verdict": self.verdict,
            "n": self.n,
        }


@dataclass(frozen=True)
class ClassCheck:
    """Precision, recall or F1 of one class in the window vs the gate's per-class view of the champion.

    ``value`` is None (verdict ``no_data``) when it is undefined on the window: recall of a class no
    labelled row has, precision of a class never predicted. ``n`` is the class's support in the window."""

    label: Any
    statistic: str
    value: float | None
    baseline: float | None
    threshold: float | None
    verdict: Verdict
    n: int

    @property
    def slice(self) -> str:
        return CLASS_SLICE + label_text(self.label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": _json_label(self.label),
            "statistic": self.statistic,
            "value": _f(self.value),
            "baseline": _f(self.baseline),
            "threshold": _f(self.threshold),
            "verdict": self.verdict,
            "n": self.n,
        }


def _json_label(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


@dataclass(frozen=True)
class PerformanceResult:
    metric: str
    verdict: Verdict
    n_labelled: int
    message: str
    checks: list[MetricCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_class: dict[str, Any] = field(default_factory=dict)
    per_class_gate: dict[str, Any] = field(default_factory=dict)
    class_checks: list[ClassCheck] = field(default_factory=list)

    @property
    def watched(self) -> MetricCheck | None:
        return next((c for c in self.checks if c.metric == self.metric and c.slice is None), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "n_labelled": self.n_labelled,
            "message": self.message,
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
            "per_class": _json_per_class(self.per_class),
            "per_class_gate": _json_per_class(self.per_class_gate),
            "class_checks": [c.to_dict() for c in self.class_checks],
        }


def _json_per_class(view: dict[str, Any]) -> dict[str, Any]:
    if not view:
        return {}
    return {**view, "classes": [_json_label(c) for c in view.get("classes", [])]}


@dataclass(frozen=True)
class RangeResult:
    share: float
    threshold: float
    n: int
    n_out: int
    verdict: Verdict
    message: str
    column: str = "prediction"

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "share": None if not math.isfinite(self.share) else self.share,
            "threshold": self.threshold,
            "n": self.n,
            "n_out": self.n_out,
            "verdict": self.verdict,
            "message": self.message,
        }


# ----------------------------------------------------------------------------- labelled rows
def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Labelled:
    """Labelled predictions of a window, typed with the champion's spec.

    ``proba`` holds the class probabilities in ``spec.classes`` order (NaN where a row has none);
    ``slices`` the values of each slice column; ``notes`` what was left out and why."""

    spec: LabelSpec
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None
    slices: dict[str, list[Any]]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y_true)


def _queries(
    project: Project,
    store: DeltaStore,
    start: datetime,
    end: datetime,
    slices: Sequence[str],
    event: str | None = None,
) -> list[tuple[str, str, list[str]]]:
    """(source, SQL, tables) of each join of feedback with predictions made in the window (on the
    ``event`` time column when given, see :mod:`.window`)."""
    from loopline.monitoring.window import window_sql

    cfg = project.config
    src = cfg.monitoring.source
    if not store.exists("feedback"):
        return []
    fb_cols = store.schema("feedback").names
    if "label" not in fb_cols:
        return []
    out: list[tuple[str, str, list[str]]] = []

    def extra(alias: str, cols: list[str]) -> str:
        return "".join(f", {alias}.{c}" for c in ("probability", "probabilities") if c in cols)

    def slice_sel(alias: str, cols: list[str]) -> str:
        return "".join(f", {alias}.{_q(s)} AS {_q(s)}" if s in cols else f", NULL AS {_q(s)}" for s in slices)

    if src in ("inference_log", "both") and store.exists("inference_log") and "request_id" in fb_cols:
        log_cols = store.schema("inference_log").names
        ok = " AND l.status < 400" if "status" in log_cols else ""
        out.append(
            (
                "inference_log",
                f"SELECT l.prediction AS prediction, fb.label AS label{extra('l', log_cols)}"
                f"{slice_sel('l', log_cols)} FROM inference_log l JOIN ("
                "  SELECT request_id, label, row_number() OVER (PARTITION BY request_id ORDER BY received_at DESC)"
                "  AS rn FROM feedback WHERE request_id IS NOT NULL) fb ON fb.request_id = l.request_id AND fb.rn = 1"
                f" WHERE {window_sql('l', log_cols, 'timestamp', start, end, event)}{ok}",
                ["feedback", "inference_log"],
            )
        )
    keys = list(cfg.model.keys)
    if src in ("batch", "both") and keys and store.exists("predictions") and all(k in fb_cols for k in keys):
        pred_cols = store.schema("predictions").names
        names = ["feedback", "predictions"]
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
        out.append(
            (
                "predictions",
                f"SELECT p.prediction AS prediction, fb.label AS label{extra('p', pred_cols)}"
                f"{sel} FROM predictions p JOIN ("
                f"  SELECT *, row_number() OVER (PARTITION BY {part} ORDER BY received_at DESC) AS rn"
                f"  FROM feedback WHERE {not_null}) fb ON {on} AND fb.rn = 1{join_features}"
                f" WHERE {window_sql('p', pred_cols, 'scored_at', start, end, event)}",
                names,
            )
        )
    return out


def _fallback_spec(project: Project, parts: list[pa.Table], known: LabelSpec | None = None) -> LabelSpec:
    """Without a champion's contract (or one without classes, e.g. a hook model with no ``classes_``): the
    config's task, the label type of the model (else of the stored predictions) and the classes seen in the
    labelled rows (sorted)."""
    from loopline.labels import from_config

    base = from_config(project.config.model)
    if not base.is_classifier:
        return base
    typed = [t for t in (p.column("prediction").type for p in parts if p.num_rows) if not pa.types.is_null(t)]
    kind = kind_of_arrow(typed[0], "classification") if typed else base.kind
    if known is not None and known.is_classifier:
        kind = known.kind
    classless = LabelSpec("classification", kind)
    seen: set[Any] = set()
    for p in parts:
        for name in ("prediction", "label"):
            values, valid, _ = typed_values(p.column(name), classless)
            seen.update(values[valid].tolist())
    try:
        return spec_for("classification", kind, sorted(seen), base.positive, base.threshold, base.target)
    except (LabelValueError, TypeError):
        return spec_for("classification", kind, sorted(seen, key=str), None, base.threshold, base.target)


def _shown(bad: dict[str, int]) -> str:
    items = sorted(bad.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{v} ({n})" for v, n in items[:MAX_SHOWN])
    return text + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")


def labelled_rows(
    project: Project,
    store: DeltaStore,
    start: datetime,
    end: datetime,
    slices: Sequence[str],
    spec: LabelSpec | None = None,
    event: str | None = None,
) -> Labelled:
    """Every labelled prediction made in the window: typed labels and predictions, probabilities, slices.

    ``spec`` is the champion's label contract (None: from the config and the rows, see :func:`_fallback_spec`);
    ``event``: the window is on this event-time column (see :mod:`.window`)."""
    parts: list[tuple[str, pa.Table]] = []
    queries = _queries(project, store, start, end, slices, event)
    if queries:
        con = store.sql(sorted({t for _, _, tables in queries for t in tables}))
        try:
            for source, sql, _ in queries:
                parts.append((source, con.sql(sql).to_arrow_table()))
        except Exception as exc:
            raise MonitoringError(f"joining predictions with feedback labels failed: {exc}") from exc
        finally:
            con.close()
    if spec is None or (spec.is_classifier and not spec.classes):
        spec = _fallback_spec(project, [t for _, t in parts], spec)
    regression = not spec.is_classifier
    notes: list[str] = []
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    probas: list[np.ndarray | None] = []
    slice_values: dict[str, list[Any]] = {s: [] for s in slices}
    sources: dict[str, int] = {}
    for source, table in parts:
        if table.num_rows == 0:
            continue
        y, y_ok, y_bad = typed_values(table.column("label"), spec)
        p, p_ok, p_bad = typed_values(table.column("prediction"), spec)
        for what, bad in (("feedback label(s)", y_bad), ("prediction(s)", p_bad)):
            if NONFINITE in bad:
                notes.append(f"{bad.pop(NONFINITE)} {what} that are not finite numbers were left out ({source})")
        if regression and y_bad:
            raise MonitoringError(
                f"feedback labels of a regression model must be numbers; got {_shown(y_bad)}",
                hint="send numeric labels to POST /feedback",
            )
        if y_bad:
            what = f"not one of the model's classes {list(spec.classes)}" if spec.classes else "not labels"
            notes.append(f"{sum(y_bad.values())} feedback label(s) {what} were left out ({source}): {_shown(y_bad)}")
        if p_bad:
            n_bad = sum(p_bad.values())
            notes.append(f"{n_bad} prediction(s) that do not parse were left out ({source}): {_shown(p_bad)}")
        keep = y_ok & p_ok
        names = table.column_names
        proba = probability_matrix(
            table.column("probabilities") if "probabilities" in names else None,
            table.column("probability") if "probability" in names else None,
            spec,
        )
        ys.append(y[keep])
        ps.append(p[keep])
        probas.append(None if proba is None else proba[keep])
        for s in slices:
            slice_values[s] += [v for v, k in zip(table.column(s).to_pylist(), keep.tolist(), strict=True) if k]
        sources[source] = int(keep.sum())
    dtype = _dtype(spec)
    y_all = np.concatenate(ys) if ys else np.zeros(0, dtype=dtype)
    p_all = np.concatenate(ps) if ps else np.zeros(0, dtype=dtype)
    proba_all: np.ndarray | None = None
    if spec.is_classifier and any(x is not None for x in probas):
        k = len(spec.classes)
        proba_all = np.concatenate(
            [x if x is not None else np.full((len(y), k), np.nan) for x, y in zip(probas, ys, strict=True)]
        )
    return Labelled(spec, y_all, p_all, proba_all, slice_values, notes, sources)


# ----------------------------------------------------------------------------- the check
def _proba_note(lab: Labelled, names: list[str]) -> tuple[np.ndarray | None, str | None]:
    """The probability matrix when every labelled row has every class's probability; else why not."""
    needing = [m for m in names if registry.get(m).needs_proba]
    if not lab.spec.is_classifier or not needing or len(lab) == 0:
        return lab.proba, None
    what = ", ".join(needing)
    if lab.proba is None:
        return None, f"{what} not computed: the labelled predictions have no probability / probabilities column"
    missing = int(np.isnan(lab.proba).any(axis=1).sum())
    if missing:
        return None, (
            f"{what} not computed: {missing} of {len(lab)} labelled predictions lack the probability of some class"
            " (probabilities map without every class of the model)"
        )
    return lab.proba, None


def evaluate_performance(
    project: Project,
    store: DeltaStore,
    start: datetime,
    end: datetime,
    baselines: dict[str, float],
    spec: LabelSpec | None = None,
    gate_per_class: dict[str, Any] | None = None,
    *,
    event: str | None = None,
) -> PerformanceResult:
    """Metrics of the labelled predictions in the window vs the gate-time ``test_<m>`` metrics.

    ``spec`` is the champion's label contract; ``gate_per_class`` its gate-time per-class view (the
    ``loopline.gate.per_class`` model-version tag)."""
    cfg = project.config
    task = cfg.model.task
    mon = cfg.monitoring
    metric = mon.performance.metric or PRIMARY[task]
    lab = labelled_rows(project, store, start, end, mon.slices, spec, event)
    spec = lab.spec
    n_classes = len(spec.classes) if spec.is_classifier and spec.classes else None
    registry.check_name(metric, task, "monitoring.performance.metric", project.config_path.name, n_classes)
    n = len(lab)
    if n == 0:
        msg = "no feedback labels for predictions made in the window"
        return PerformanceResult(metric, "no_data", 0, msg, notes=lab.notes)
    names = metric_names(spec, metric, baselines)
    proba, why = _proba_note(lab, names)
    notes = list(lab.notes) + ([why] if why else [])
    degradation = mon.performance.max_degradation
    checks = _checks(names, lab.y_true, lab.y_pred, proba, spec, baselines, degradation, None)
    for col in mon.slices:
        values = lab.slices[col]
        for v in sorted({x for x in values if x is not None}, key=str):
            mask = np.array([x == v for x in values])
            sub = None if proba is None else proba[mask]
            checks += _checks(
                names, lab.y_true[mask], lab.y_pred[mask], sub, spec, baselines, degradation, f"{col}={v}"
            )
    view: dict[str, Any] = {}
    class_checks: list[ClassCheck] = []
    gate_view = _gate_view(gate_per_class or {}, spec)
    if spec.is_classifier and spec.classes:
        view = registry.per_class(registry.Scored(lab.y_true, lab.y_pred, None, spec))
        class_checks = _class_checks(view, gate_view, degradation)
    watched = next((c for c in checks if c.metric == metric and c.slice is None), None)
    if watched is None:
        reason = why if why and registry.get(metric).needs_proba else "it is undefined on these rows"
        if reason == "it is undefined on these rows" and spec.is_classifier:
            present = sorted({label_text(v) for v in lab.y_true.tolist()})
            reason += f" (labels present: {', '.join(present)})"
        msg = f"{metric} not computed on {n} labelled predictions: {reason}"
        return PerformanceResult(metric, "no_data", n, msg, checks, notes, view, gate_view, class_checks)
    base = f"{watched.baseline:.4g}" if watched.baseline is not None else "none"
    msg = (
        f"{metric} {watched.value:.4g} on {n} labelled predictions"
        f" (gate-time test {base}, limit {watched.threshold:.4g})"
    )
    return PerformanceResult(metric, watched.verdict, n, msg, checks, notes, view, gate_view, class_checks)


def _checks(
    names: list[str],
    labels: np.ndarray,
    preds: np.ndarray,
    proba: np.ndarray | None,
    spec: LabelSpec,
    baselines: dict[str, float],
    max_degradation: float,
    slice_: str | None,
) -> list[MetricCheck]:
    out = []
    task = "classification" if spec.is_classifier else "regression"
    for m, value in compute_metrics(task, labels, preds, proba, spec, names).items():
        base = baselines.get(m)
        if base is None or not math.isfinite(base):
            out.append(MetricCheck(m, value, None, math.nan, "ok", len(labels), slice_))
            continue
        limit = limit_for(m, base, max_degradation)
        verdict: Verdict = "breach" if is_breach(m, value, limit) else "ok"
        out.append(MetricCheck(m, value, base, limit, verdict, len(labels), slice_))
    return out


def _gate_view(view: dict[str, Any], spec: LabelSpec) -> dict[str, Any]:
    """The gate's per-class view with its classes parsed to the spec's type (JSON keeps ints, bools, strings)."""
    if not view or not isinstance(view.get("classes"), list):
        return {}
    classes = []
    for c in view["classes"]:
        try:
            classes.append(spec.parse(c))
        except LabelValueError:
            classes.append(c)
    return {**view, "classes": classes}


def _class_checks(view: dict[str, Any], gate: dict[str, Any], max_degradation: float) -> list[ClassCheck]:
    cm = np.asarray(view["confusion_matrix"])
    predicted = cm.sum(axis=0) if cm.size else np.zeros(len(view["classes"]), dtype=int)
    gate_index = {label_text(c): i for i, c in enumerate(gate.get("classes", []))}
    out = []
    for i, label in enumerate(view["classes"]):
        support = int(view["support"][i])
        j = gate_index.get(label_text(label))
        for stat in PER_CLASS:
            undefined = {
                "precision": predicted[i] == 0,
                "recall": support == 0,
                "f1": support == 0 and predicted[i] == 0,
            }[stat]
            value = None if undefined else float(view[stat][i])
            base = None
            if j is not None and isinstance(gate.get(stat), list) and j < len(gate[stat]):
                base = float(gate[stat][j])
            limit = limit_for(stat, base, max_degradation) if base is not None else None
            verdict: Verdict
            if value is None:
                verdict = "no_data"
            elif limit is not None and is_breach(stat, value, limit):
                verdict = "breach"
            else:
                verdict = "ok"
            out.append(ClassCheck(label, stat, value, base, limit, verdict, support))
    return out


# ----------------------------------------------------------------------------- range
def check_range(
    project: Project,
    store: DeltaStore,
    start: datetime,
    end: datetime,
    spec: LabelSpec | None = None,
    *,
    event: str | None = None,
) -> RangeResult | None:
    """Share of predictions in the window outside ``gate.prediction_range`` (None when not checkable).

    Regression: the ``prediction``; classifiers: the ``probability`` column (P(positive) of a binary
    model, P(predicted label) else). ``predictions`` rows carry their ``out_of_range`` flag (batch
    scoring applies the same rule); ``inference_log`` rows are checked here."""
    from loopline.monitoring.window import window_sql

    cfg = project.config
    limit = cfg.monitoring.max_range_violation_rate
    rng = cfg.gate.prediction_range
    src = cfg.monitoring.source
    classifier = spec.is_classifier if spec is not None else cfg.model.task == "classification"
    column = "probability" if classifier else "prediction"
    parts: list[str] = []
    names: list[str] = []
    if src in ("batch", "both") and store.exists("predictions"):
        cols = store.schema("predictions").names
        if "out_of_range" in cols:
            names.append("predictions")
            parts.append(
                "SELECT count(*) AS n, count(*) FILTER (WHERE out_of_range) AS n_out FROM predictions p"
                f" WHERE {window_sql('p', cols, 'scored_at', start, end, event)}"
            )
    if src in ("inference_log", "both") and store.exists("inference_log") and rng:
        cols = store.schema("inference_log").names
        if column in cols:
            names.append("inference_log")
            ok = " AND status < 400" if "status" in cols else ""
            value = f"TRY_CAST({column} AS DOUBLE)"
            parts.append(
                f"SELECT count(*) AS n, count(*) FILTER (WHERE {value} < {float(rng[0])!r} OR {value} > "
                f"{float(rng[1])!r}) AS n_out FROM inference_log l WHERE "
                f"{window_sql('l', cols, 'timestamp', start, end, event)} AND {column} IS NOT NULL{ok}"
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
    what = "probabilities" if classifier else "predictions"
    if n == 0:
        return RangeResult(math.nan, limit, 0, 0, "no_data", f"no {what} in the window", column)
    share = n_out / n
    verdict: Verdict = "breach" if share > limit else "ok"
    return RangeResult(
        share,
        limit,
        n,
        n_out,
        verdict,
        f"{n_out} of {n} {what} out of range ({share:.2%}, limit {limit:.2%})",
        column,
    )
