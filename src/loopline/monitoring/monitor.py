"""The monitor stage: current window vs the champion's training data, labels vs gate metrics, range.

``monitor(project)``:

1. window: ``[until - window, until)`` (default ``monitoring.window`` up to now), or ``[since, until)``.
2. reference: the ``features`` table at the exact Delta version the champion was trained on (the
   ``loopline.features_version`` tag of its run), all rows of that version (training, validation and
   test rows alike: the distribution the model was built from), model input columns only. The
   champion (loaded once through :func:`loopline.runtime.load`) scores the same rows once to give the
   reference predictions: labels in the target's type and, for classifiers, the ``probability``
   (P(positive) of a binary model, P(predicted label) else).
3. current: inputs and predictions from ``inference_log`` (by ``timestamp``, successful requests) and/or
   batch scoring (``predictions`` by ``scored_at``; inputs = the ``features`` rows of those
   ``_batch_id`` values), per ``monitoring.source``.
4. drift per feature, dataset drift, prediction drift (:mod:`.drift`): of the ``prediction`` (numeric for
   regression; the label distribution for classifiers, labels compared as typed values so ``True``,
   ``"True"`` and ``"true"`` are one category) and, for classifiers, of the ``probability``; either
   breaching is prediction drift. Performance on feedback labels (with the champion's label contract,
   per class too) and the range check (:mod:`.performance`).
5. one append commit to the ``monitoring`` table, an offline HTML report and JSON under
   ``<state_dir>/reports/``.

Verdict: ``breach`` when dataset drift, prediction drift, performance or the range check breached
(exit code :data:`EXIT_BREACH`); ``no_data`` when the window holds no inputs and no predictions
(exit code 0, with a message); ``ok`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from loopline.display import repr_html
from loopline.errors import MonitoringError
from loopline.monitoring.drift import (
    DEFAULT_SAMPLE_SIZE,
    DriftReport,
    FeatureDrift,
    Kind,
    Profile,
    Profiler,
    compare,
    compare_column,
    infer_kinds,
)
from loopline.monitoring.performance import (
    CLASS_SLICE,
    PerformanceResult,
    RangeResult,
    check_range,
    evaluate_performance,
    label_text,
)
from loopline.monitoring.window import (
    event_column,
    event_filter,
    newest_event,
    resolve_window,
    utc,
    window_filter,
)

__all__ = [
    "EXIT_BREACH",
    "EXIT_NO_DATA",
    "MonitorResult",
    "latest_verdicts",
    "monitor",
    "monitor_job",
    "resolve_window",
]

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.runtime import ModelRuntime
    from loopline.tables import DeltaStore

EXIT_BREACH = 10
"""Exit code of `loopline monitor` when drift, performance or range breached."""
EXIT_NO_DATA = 11
"""Exit code of `loopline monitor` when the window held no input rows to check (0: within thresholds)."""
TABLE = "monitoring"
_TS = pa.timestamp("us", tz="UTC")
MONITORING_SCHEMA = pa.schema(
    [
        pa.field("checked_at", _TS, nullable=False),
        pa.field("window_start", _TS, nullable=False),
        pa.field("window_end", _TS, nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("slice", pa.string()),
        pa.field("statistic", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("n_reference", pa.int64(), nullable=False),
        pa.field("n_current", pa.int64(), nullable=False),
    ]
)
Verdict = Literal["ok", "breach", "no_data"]
_RANK = {"no_data": 0, "ok": 1, "breach": 2}
PREDICTION_COLUMNS = ("prediction", "probability")
PER_CLASS_FEATURE = "per_class"
CONFUSION_FEATURE = "confusion_matrix"
PREDICTED = "predicted="


@dataclass
class MonitorResult:
    """What one monitoring check found; rendered the same way in the CLI, the report and JSON."""

    _repr_html_ = repr_html  # the notebook view: loopline.display

    checked_at: datetime
    window_start: datetime
    window_end: datetime
    model_name: str
    model_version: str
    run_id: str
    features_version: int
    verdict: Verdict
    message: str
    breaches: list[str]
    drift: DriftReport
    prediction_drifts: list[FeatureDrift]
    performance: PerformanceResult | None
    range: RangeResult | None
    rows: pa.Table
    table_version: int | None = None
    report_html: Path | None = None
    report_json: Path | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"breach": EXIT_BREACH, "no_data": EXIT_NO_DATA}.get(self.verdict, 0)

    @property
    def prediction_drift(self) -> FeatureDrift | None:
        """The decisive row of the prediction drift check: the first that breached (``prediction``, then
        ``probability``), else the ``prediction`` row."""
        rows = self.prediction_drifts
        return next((f for f in rows if f.verdict == "breach"), rows[0] if rows else None)

    def summary(self) -> str:
        return f"{self.verdict}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "features_version": self.features_version,
            "verdict": self.verdict,
            "message": self.message,
            "breaches": self.breaches,
            "exit_code": self.exit_code,
            "drift": self.drift.to_dict(),
            "prediction_drift": self.prediction_drift.to_dict() if self.prediction_drift else None,
            "prediction_drifts": [f.to_dict() for f in self.prediction_drifts],
            "performance": self.performance.to_dict() if self.performance else None,
            "range": self.range.to_dict() if self.range else None,
            "actions": self.actions,
            "report_html": str(self.report_html) if self.report_html else None,
        }


# ----------------------------------------------------------------------------- champion & reference
@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    features_version: int
    baselines: dict[str, float]
    per_class: dict[str, Any] = field(default_factory=dict)


def champion_info(project: Project) -> Champion:
    """The champion version, the Delta version of ``features`` it was trained on, its test metrics and
    the gate's per-class view of it (``loopline.gate.per_class``)."""
    import json

    from loopline.tracking import client, require_champion

    mv = require_champion(project)
    run = client(project).get_run(str(mv.run_id))
    tag = run.data.tags.get("loopline.features_version")
    if tag is None:
        raise MonitoringError(
            f"champion {project.registered_model} v{mv.version} (run {mv.run_id}) has no "
            "loopline.features_version tag, so its training data is unknown",
            hint="retrain with `loopline run train`, which records the features table version it read",
        )
    try:
        version = int(tag)
    except ValueError:
        raise MonitoringError(f"run {mv.run_id}: loopline.features_version must be an integer, got {tag!r}") from None
    baselines = {k[len("test_") :]: float(v) for k, v in run.data.metrics.items() if k.startswith("test_")}
    per_class: dict[str, Any] = {}
    raw = (mv.tags or {}).get("loopline.gate.per_class")
    if raw:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError:  # truncated at 5000 characters on a model with many classes
            loaded = {}
        per_class = loaded if isinstance(loaded, dict) else {}
    return Champion(project.registered_model, str(mv.version), str(mv.run_id), version, baselines, per_class)


def load_champion(project: Project, champ: Champion) -> ModelRuntime:
    """The champion through the one model runtime (its label contract comes with it)."""
    from loopline import runtime
    from loopline.context import context
    from loopline.labels import from_config

    try:
        return runtime.load(
            f"models:/{champ.name}/{champ.version}",
            from_config(project.config.model),
            name=champ.name,
            version=champ.version,
            run_id=champ.run_id,
            ctx=context(project),
        )
    except runtime.RuntimeLoadError as exc:
        raise MonitoringError(f"cannot load champion {champ.name} v{champ.version}: {exc}") from exc


def label_categories(col: pa.Array | pa.ChunkedArray, spec: LabelSpec) -> pa.Array:
    """Labels as drift categories: each value parsed to the target's type and written as text the same way
    (``True``, ``"True"`` and ``"true"`` are ``true``; ``1``, ``"1"`` and ``1.0`` are ``1``); a value that does
    not parse stays as its text, a category of its own."""
    import dataclasses

    import pyarrow.compute as pc

    from loopline.labels import LabelValueError

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if len(col) == 0 or pa.types.is_null(col.type):
        return pa.array([None] * len(col), pa.string())
    parser = dataclasses.replace(spec, classes=())
    enc = pc.dictionary_encode(col)
    texts = []
    for v in enc.dictionary.to_pylist():
        try:
            texts.append(label_text(parser.parse(v)))
        except LabelValueError:
            texts.append(label_text(v))
    return pc.take(pa.array(texts, pa.string()), enc.indices)


def _reference_predictions(rt: ModelRuntime, batch: pa.RecordBatch) -> pa.RecordBatch:
    """``prediction`` (and ``probability`` for a classifier that gives probabilities) of the reference rows."""
    out = rt.predict_frame(batch.to_pandas())
    spec = rt.spec
    if not spec.is_classifier:
        return pa.RecordBatch.from_arrays([pa.array(np.asarray(out.predictions, dtype=np.float64))], ["prediction"])
    arrays = [label_categories(pa.array(out.predictions.tolist(), spec.arrow_type), spec)]
    names = ["prediction"]
    if out.proba is not None:
        arrays.append(pa.array(spec.score(out.predictions, out.proba), pa.float64()))
        names.append("probability")
    return pa.RecordBatch.from_arrays(arrays, names)


def _finite(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Table:
    """One numeric column with its null and NaN values left out (nulls there mean "not given")."""
    import pyarrow.compute as pc

    col = batch.column(batch.schema.names.index(name))
    try:
        col = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not numbers: no probabilities given
        col = pa.nulls(len(col), pa.float64())
    keep = pc.and_(pc.is_valid(col), pc.invert(pc.is_nan(col)))
    return pa.table({name: pc.filter(col, keep)})


# ----------------------------------------------------------------------------- current window
def _current_batches(
    project: Project, store: DeltaStore, inputs: list[str], start: datetime, end: datetime, event: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Inputs (and ``prediction`` / ``probability``) of the window, streamed from the configured sources
    (``event``: the window is on that event-time column; see :mod:`.window`)."""
    src = project.config.monitoring.source
    if src in ("inference_log", "both") and store.exists("inference_log"):
        dataset = store.dataset("inference_log")
        names = dataset.schema.names
        flt = window_filter(dataset, "timestamp", start, end, event)
        if "status" in names:
            flt = flt & (ds.field("status") < 400)
        cols = [c for c in inputs if c in names] + [c for c in PREDICTION_COLUMNS if c in names]
        yield from dataset.scanner(columns=cols, filter=flt).to_batches()
    if src in ("batch", "both") and store.exists("predictions"):
        preds = store.dataset("predictions")
        flt = window_filter(preds, "scored_at", start, end, event)
        # the scored rows' own ingest batches (lineage); tables written before it: the scoring batch id
        id_col = "_input_batch_id" if "_input_batch_id" in preds.schema.names else "_batch_id"
        has_ids = id_col in preds.schema.names
        pcols = [c for c in PREDICTION_COLUMNS if c in preds.schema.names]
        ids: set[str] = set()
        for b in preds.scanner(columns=pcols + ([id_col] if has_ids else []), filter=flt).to_batches():
            if has_ids:
                ids.update(x for x in b.column(len(pcols)).to_pylist() if x is not None)
            yield b.select(pcols)
        if ids and store.exists("features"):
            feats = store.dataset("features")
            if "_batch_id" in feats.schema.names:
                cols = [c for c in inputs if c in feats.schema.names]
                flt2 = ds.field("_batch_id").isin(sorted(ids))
                by_time = event_filter(feats, start, end, event) if event is not None else None
                if by_time is not None:  # only the scored batches' rows of the window itself
                    flt2 = flt2 & by_time
                yield from feats.scanner(columns=cols, filter=flt2).to_batches()


# ----------------------------------------------------------------------------- the stage
def monitor(
    project: Project,
    window: timedelta | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime | None = None,
    write: bool = True,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    time: str | None = None,
) -> MonitorResult:
    """Run one monitoring check; see the module docstring. ``time``: ``event`` or ``wall`` (default
    ``monitoring.time``): which clock the window is on."""
    cfg = project.config
    mon = cfg.monitoring
    checked_at = utc(now or datetime.now(UTC))
    event = event_column(project, time)

    from loopline.monitoring.report import write_reports
    from loopline.tables import DeltaStore

    champ = champion_info(project)
    store = DeltaStore(project.storage_root, project.storage_options)
    if event is not None and until is None and since is None:
        newest = newest_event(project, store, event)  # the last `window` of data, not of wall-clock time
        until = newest + timedelta(microseconds=1) if newest is not None else None
    start, end = resolve_window(mon.window, window, since, until, now=checked_at)
    if not store.exists("features"):
        raise MonitoringError(
            "the features table does not exist, so there is no reference data",
            hint="run `loopline run ingest` and `loopline run train` first",
        )
    ref_schema = store.dataset("features", version=champ.features_version).schema
    inputs = cfg.model.input_columns(ref_schema.names)
    kinds, skipped = infer_kinds(ref_schema, inputs)
    if mon.source != "batch":
        for name in cfg.serving.log.redact:
            if kinds.pop(name, None) is not None:
                skipped[name] = "redacted in the inference log (serving.log.redact)"
    for name in mon.columns:
        if name not in kinds and name not in PREDICTION_COLUMNS:
            raise MonitoringError(
                f"monitoring.columns.{name}: {name!r} is not a monitored model input column",
                hint=f"monitored columns: {', '.join(kinds) or '(none)'}, prediction, probability (classifiers)",
            )

    rt = load_champion(project, champ)
    spec = rt.spec
    pred_kind: dict[str, Kind] = {"prediction": "categorical" if spec.is_classifier else "numeric"}
    prob_kind: dict[str, Kind] = {"probability": "numeric"}

    ref_feat = Profiler(kinds, sample_size=sample_size, seed=0)
    ref_pred = Profiler(pred_kind, sample_size=sample_size, seed=0)
    ref_prob = Profiler(prob_kind, sample_size=sample_size, seed=0)
    model_inputs = [c for c in inputs if c in ref_schema.names]
    for batch in store.scan("features", version=champ.features_version, columns=model_inputs):
        if batch.num_rows == 0:
            continue
        ref_feat.update(batch)
        try:
            scored = _reference_predictions(rt, batch)
        except Exception as exc:
            raise MonitoringError(f"champion v{champ.version} failed to score the reference rows: {exc}") from exc
        ref_pred.update(scored.select(["prediction"]))
        if "probability" in scored.schema.names:
            ref_prob.update(_finite(scored, "probability"))
    ref_p = ref_feat.result()
    ref_pp = ref_pred.result()
    ref_pr = ref_prob.result()

    cur_feat = Profiler(kinds, edges=ref_p.edges(), sample_size=sample_size, seed=1)
    cur_pred = Profiler(pred_kind, edges=ref_pp.edges(), sample_size=sample_size, seed=1)
    cur_prob = Profiler(prob_kind, edges=ref_pr.edges(), sample_size=sample_size, seed=1)
    for batch in _current_batches(project, store, model_inputs, start, end, event):
        names = batch.schema.names
        if any(c in names for c in kinds):
            cur_feat.update(batch)
        if "prediction" in names:
            col = batch.column(names.index("prediction"))
            if spec.is_classifier:
                col = label_categories(col, spec)
            cur_pred.update(pa.RecordBatch.from_arrays([col], ["prediction"]))
        if "probability" in names and spec.is_classifier:
            cur_prob.update(_finite(batch, "probability"))
    drift = compare(ref_p, cur_feat.result(), mon, skipped=skipped)
    pred_drifts = [_compare_prediction("prediction", pred_kind["prediction"], ref_pp, cur_pred.result(), mon)]
    if spec.is_classifier and ref_prob.rows:
        prob = _compare_prediction("probability", "numeric", ref_pr, cur_prob.result(), mon)
        if cur_prob.rows == 0 and cur_pred.rows:
            prob = replace(prob, detail="no probability in the current window's predictions")
        pred_drifts.append(prob)
    perf = evaluate_performance(project, store, start, end, champ.baselines, spec, champ.per_class, event=event)
    rng = check_range(project, store, start, end, spec, event=event)
    pred_verdict = max((f.verdict for f in pred_drifts), key=lambda v: _RANK[v])

    breaches = [
        kind
        for kind, verdict in (
            ("dataset_drift", drift.verdict),
            ("prediction_drift", pred_verdict),
            ("performance", perf.verdict),
            ("range", rng.verdict if rng else "ok"),
        )
        if verdict == "breach"
    ]
    n_inputs, n_preds = cur_feat.rows, cur_pred.rows
    if breaches:
        verdict: Verdict = "breach"
        message = "breach: " + ", ".join(_describe(k, drift, pred_drifts, perf, rng) for k in breaches)
    elif n_inputs == 0:  # a check with no rows says so, never "ok"
        verdict = "no_data"
        clock = f"event time {event}" if event else "wall clock"
        what = "no data" if n_preds == 0 else f"{n_preds} predictions but no input rows to check for drift"
        message = f"{what} in window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ({clock}; source: {mon.source})"
    else:
        verdict = "ok"
        message = (
            f"within thresholds: {len(drift.drifted)} of {len(drift.features)} features drifted"
            f" ({n_inputs} input rows, {n_preds} predictions)"
        )
    excluded = {**drift.excluded, **{f.feature: f.excluded for f in pred_drifts if f.excluded}}
    if excluded:  # never silent: values no statistic could use (infinite, too large) were left out
        each = ", ".join(f"{k}: {n}" for k, n in excluded.items())
        message += f"; {sum(excluded.values())} value(s) excluded as not finite or too large ({each})"
    result = MonitorResult(
        checked_at=checked_at,
        window_start=start,
        window_end=end,
        model_name=champ.name,
        model_version=champ.version,
        run_id=champ.run_id,
        features_version=champ.features_version,
        verdict=verdict,
        message=message,
        breaches=breaches,
        drift=drift,
        prediction_drifts=pred_drifts,
        performance=perf,
        range=rng,
        rows=_rows(checked_at, start, end, champ.version, drift, pred_drifts, perf, rng),
    )
    if write:
        result.table_version = store.append(TABLE, result.rows, stage="monitor", verdict=verdict)
        result.report_html, result.report_json = write_reports(project, result, store)
    return result


def _compare_prediction(name: str, kind: Kind, ref: Profile, cur: Profile, mon: Any) -> FeatureDrift:
    col = mon.columns.get(name)
    return compare_column(
        name,
        kind,
        ref.sketches[name],
        cur.sketches[name],
        small_sample=mon.small_sample,
        method=col.method if col else "auto",
        threshold=col.threshold if col else None,
    )


def _describe(
    kind: str, drift: DriftReport, preds: list[FeatureDrift], perf: PerformanceResult, rng: RangeResult | None
) -> str:
    if kind == "dataset_drift":
        return f"dataset drift ({len(drift.drifted)}/{len(drift.features)} features: {', '.join(drift.drifted)})"
    if kind == "prediction_drift":
        return "prediction drift (" + "; ".join(f"{p.feature}: {p.detail}" for p in preds if p.drifted) + ")"
    if kind == "performance":
        return f"performance ({perf.message})"
    assert rng is not None
    return f"range ({rng.message})"


def _rows(
    checked_at: datetime,
    start: datetime,
    end: datetime,
    version: str,
    drift: DriftReport,
    preds: list[FeatureDrift],
    perf: PerformanceResult,
    rng: RangeResult | None,
) -> pa.Table:
    rows: list[dict[str, Any]] = []

    def add(
        kind: str,
        feature: str,
        statistic: str,
        value: float | None,
        threshold: float | None,
        verdict: str,
        n_ref: int,
        n_cur: int,
        slice_: str | None = None,
    ) -> None:
        rows.append(
            {
                "checked_at": checked_at,
                "window_start": start,
                "window_end": end,
                "model_version": version,
                "kind": kind,
                "feature": feature,
                "slice": slice_,
                "statistic": statistic,
                "value": _f(value),
                "threshold": _f(threshold),
                "verdict": verdict,
                "n_reference": n_ref,
                "n_current": n_cur,
            }
        )

    for f in drift.features:
        add("drift", f.feature, f.statistic, f.value, f.threshold, f.verdict, f.n_reference, f.n_current)
    add(
        "dataset_drift",
        "*",
        "drift_share",
        drift.share,
        drift.drift_share,
        drift.verdict,
        drift.n_reference,
        drift.n_current,
    )
    for p in preds:
        add("prediction_drift", p.feature, p.statistic, p.value, p.threshold, p.verdict, p.n_reference, p.n_current)
    if perf.checks:
        for c in perf.checks:
            add("performance", c.metric, c.metric, c.value, c.threshold, c.verdict, 0, c.n, c.slice)
    if perf.watched is None:
        add("performance", perf.metric, perf.metric, None, None, perf.verdict, 0, perf.n_labelled)
    gate_support = _gate_support(perf.per_class_gate)
    for cc in perf.class_checks:
        add(
            "performance",
            PER_CLASS_FEATURE,
            cc.statistic,
            cc.value,
            cc.threshold,
            cc.verdict,
            gate_support.get(label_text(cc.label), 0),
            cc.n,
            cc.slice,
        )
    view = perf.per_class
    if view:
        classes = view["classes"]
        for i, label in enumerate(classes):
            text = label_text(label)
            add(
                "performance",
                PER_CLASS_FEATURE,
                "support",
                float(view["support"][i]),
                None,
                "ok",
                gate_support.get(text, 0),
                perf.n_labelled,
                CLASS_SLICE + text,
            )
        for i, row in enumerate(view["confusion_matrix"]):
            for j, count in enumerate(row):
                if count:
                    add(
                        "performance",
                        CONFUSION_FEATURE,
                        PREDICTED + label_text(classes[j]),
                        float(count),
                        None,
                        "ok",
                        0,
                        perf.n_labelled,
                        CLASS_SLICE + label_text(classes[i]),
                    )
    if rng is not None:
        add("range", rng.column, "out_of_range_share", rng.share, rng.threshold, rng.verdict, 0, rng.n)
    return pa.Table.from_pylist(rows, schema=MONITORING_SCHEMA)


def _gate_support(view: dict[str, Any]) -> dict[str, int]:
    classes, support = view.get("classes") or [], view.get("support") or []
    return {label_text(c): int(n) for c, n in zip(classes, support, strict=False)}


def _f(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ----------------------------------------------------------------------------- readers for others
def latest_verdicts(project: Project) -> dict[str, Any]:
    """The rows of the most recent check, for Prometheus gauges and `loopline status`.

    ``{"checked_at": iso | None, "model_version": str | None, "verdict": "ok" | "breach" | "no_data" | None,
    "kinds": {kind: verdict}, "rows": [{kind, feature, slice, statistic, value, threshold, verdict}]}``;
    ``kinds`` holds the check-level verdicts (``dataset_drift``, ``prediction_drift``, ``performance``,
    ``range``) where the watched performance metric decides ``performance`` and the worse of the
    ``prediction`` / ``probability`` rows decides ``prediction_drift``.
    """
    from loopline.tables import DeltaStore

    empty: dict[str, Any] = {"checked_at": None, "model_version": None, "verdict": None, "kinds": {}, "rows": []}
    store = DeltaStore(project.storage_root, project.storage_options)
    if not store.exists(TABLE):
        return empty
    dataset = store.dataset(TABLE)
    times = dataset.to_table(columns=["checked_at"]).column(0)
    if len(times) == 0:
        return empty
    import pyarrow.compute as pc

    last = pc.max(times)
    table = dataset.to_table(filter=ds.field("checked_at") == last)
    rows = table.select(["kind", "feature", "slice", "statistic", "value", "threshold", "verdict"]).to_pylist()
    from loopline.metrics import PRIMARY

    metric = project.config.monitoring.performance.metric or PRIMARY[project.config.model.task]
    kinds: dict[str, str] = {}
    for r in rows:
        k = r["kind"]
        top = k in ("dataset_drift", "prediction_drift", "range")
        decides = top or (k == "performance" and r["slice"] is None and r["feature"] == metric)
        if decides and _RANK.get(r["verdict"], 0) >= _RANK.get(kinds.get(k, ""), -1):
            kinds[k] = r["verdict"]
    if "breach" in kinds.values():
        verdict = "breach"
    elif kinds.get("dataset_drift") == "no_data" or "ok" not in kinds.values():
        verdict = "no_data"  # no input rows were checked: never "ok"
    else:
        verdict = "ok"
    versions = table.column("model_version").to_pylist()
    return {
        "checked_at": last.as_py().isoformat(),
        "model_version": versions[0] if versions else None,
        "verdict": verdict,
        "kinds": kinds,
        "rows": rows,
    }


def monitor_job(
    project: Project,
    window: str | timedelta | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    time: str | None = None,
) -> MonitorResult:
    """The `monitor` job (``loopline run monitor`` and the scheduler)."""
    from loopline.config import parse_duration

    def when(x: datetime | str | None) -> datetime | None:
        return datetime.fromisoformat(x) if isinstance(x, str) else x

    try:
        length = parse_duration(window) if window is not None else None
    except ValueError:
        raise MonitoringError(f"window must be a duration like 7d, 12h or 30m; got {window!r}") from None
    return monitor(project, length, when(since), when(until), time=time)
