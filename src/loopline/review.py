"""Expert review: predictions flagged for a human, the labels they record, and lifting the review flag.

* :func:`flagged` lists what needs an expert's eye: ``predictions`` rows marked ``out_of_range``,
  ``inference_log`` rows whose prediction (classifiers: ``probability``) is outside
  ``gate.prediction_range`` (or NaN), and classifier rows below a minimum confidence. Confidence comes
  from the ``probability`` column: ``max(p, 1 - p)`` for a binary model (``p`` is P(positive)), ``p``
  (P(predicted label)) for a multiclass one; tables of older versions with a ``prediction_proba`` /
  ``confidence`` column are read as before. Rows that already have feedback (by request id or by the
  model's keys) are left out.
* :func:`label` records the expert's label as one ``feedback`` row with ``_source = "review"``; an
  unknown request id or key is refused, and the label must fit the champion's label contract (a number
  for regression; one of its classes, parsed to the target's type, for a classifier), stored typed.
* :func:`clear` lifts the environment's needs-review flag and records the human decision as a
  ``registry_events`` row (action ``review_cleared``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.errors import LooplineError, ReviewError, TableError

if TYPE_CHECKING:
    import pyarrow.dataset as ds

    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.tables import DeltaStore

FEEDBACK = "feedback"
PREDICTIONS = "predictions"
INFERENCE_LOG = "inference_log"
REGISTRY_EVENTS = "registry_events"
PROBABILITY = "probability"
CONFIDENCE_COLUMNS = ("prediction_proba", "confidence")  # tables written before the probability column
DEFAULT_MIN_CONFIDENCE = 0.6
REVIEW_SOURCE = "review"
REVIEW_CLEARED = "review_cleared"
_TS = pa.timestamp("us", tz="UTC")


# ----------------------------------------------------------------------------- results
@dataclass
class FlaggedPrediction:
    """One prediction awaiting an expert label."""

    source: str
    request_id: str | None
    keys: dict[str, Any]
    prediction: Any
    reason: str
    model_version: str | None
    at: datetime | None
    confidence: float | None = None

    @property
    def ref(self) -> str:
        """How to label it: ``--request-id ID`` or ``--key col=value ...``."""
        if self.request_id is not None:
            return self.request_id
        return " ".join(f"{k}={v}" for k, v in self.keys.items())

    def to_dict(self) -> dict[str, Any]:
        pred = self.prediction
        if isinstance(pred, float) and math.isnan(pred):
            pred = None
        return {
            "source": self.source,
            "request_id": self.request_id,
            "keys": {k: _jsonable(v) for k, v in self.keys.items()},
            "prediction": pred,
            "reason": self.reason,
            "model_version": self.model_version,
            "at": self.at.isoformat() if self.at else None,
            "confidence": self.confidence,
        }


@dataclass
class ReviewList:
    items: list[FlaggedPrediction]
    total: int
    already_labelled: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "shown": len(self.items),
            "already_labelled": self.already_labelled,
            "notes": self.notes,
            "items": [i.to_dict() for i in self.items],
        }


@dataclass
class LabelResult:
    row: dict[str, Any]
    table_version: int

    def to_dict(self) -> dict[str, Any]:
        return {"row": {k: _jsonable(v) for k, v in self.row.items()}, "table_version": self.table_version}


@dataclass
class ClearResult:
    cleared: bool
    previous_reason: str | None
    actor: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "cleared": self.cleared,
            "previous_reason": self.previous_reason,
            "actor": self.actor,
            "reason": self.reason,
        }


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _norm(v: Any) -> str:
    """A key value as text, so 3, 3.0 and "3" match across tables whose key types differ."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


def _store(project: Project) -> DeltaStore:
    from loopline.tables import DeltaStore

    return DeltaStore(project.storage_root, project.storage_options)


# ----------------------------------------------------------------------------- list
def _labelled(store: DeltaStore, keys: list[str]) -> tuple[set[str], set[tuple[str, ...]]]:
    """Request ids and key tuples that already have feedback."""
    if not store.exists(FEEDBACK):
        return set(), set()
    names = store.schema(FEEDBACK).names
    cols = [c for c in ("request_id", *keys) if c in names]
    if not cols:
        return set(), set()
    ids: set[str] = set()
    tuples: set[tuple[str, ...]] = set()
    has_keys = bool(keys) and all(k in names for k in keys)
    for row in store.read(FEEDBACK, columns=cols).to_pylist():
        if row.get("request_id") is not None:
            ids.add(str(row["request_id"]))
        if has_keys and all(row.get(k) is not None for k in keys):
            tuples.add(tuple(_norm(row[k]) for k in keys))
    return ids, tuples


@dataclass(frozen=True)
class Confidence:
    """How a table gives a prediction's confidence: the column, and whether it is P(positive) of a binary model
    (confidence = max(p, 1 - p)) or already a confidence (P(predicted label), or an older confidence column)."""

    column: str
    binary: bool = False

    def of(self, value: float | None) -> float | None:
        if value is None or math.isnan(value):
            return None
        return max(value, 1.0 - value) if self.binary else value

    def below(self, threshold: float) -> ds.Expression:
        import pyarrow.dataset as pads

        col = pads.field(self.column)
        low = col < pa.scalar(threshold)
        return (low & (col > pa.scalar(1.0 - threshold))) if self.binary else low

    def reason(self, value: float, conf: float, threshold: float) -> str:
        if self.column == PROBABILITY:
            return f"confidence {conf:.3g} < {threshold:g} (probability {value:.3g})"
        return f"{self.column} {conf:.3g} < {threshold:g}"


def _is_float(schema: pa.Schema, name: str) -> bool:
    return name in schema.names and pa.types.is_floating(schema.field(name).type)


def _confidence(schema: pa.Schema, binary: bool | None) -> Confidence | None:
    """The ``probability`` column (new tables), else ``prediction_proba`` / ``confidence`` (older ones)."""
    if _is_float(schema, PROBABILITY) and binary is not None:
        return Confidence(PROBABILITY, binary)
    for name in CONFIDENCE_COLUMNS:
        if _is_float(schema, name):
            return Confidence(name)
    return None


def _binary(project: Project, spec: LabelSpec | None, dataset: ds.Dataset) -> bool | None:
    """Whether ``probability`` is P(positive) (binary model): from the champion's label contract, else the
    ``probabilities`` map of a logged row, else the config (model.positive_label) or the predicted labels."""
    if project.config.model.task != "classification":
        return None
    if spec is not None and spec.classes:
        return spec.binary
    names = dataset.schema.names
    if "probabilities" in names:
        import numpy as np

        for batch in dataset.to_batches(columns=["probabilities"], batch_size=1024):
            col = batch.column(0)
            if not pa.types.is_map(col.type) or col.null_count == len(col):
                continue
            sizes = np.diff(col.offsets.to_numpy(zero_copy_only=False))[np.asarray(col.is_valid())]
            return bool(sizes[0] == 2)
    if project.config.model.positive_label is not None:
        return True
    if "prediction" in names:
        import pyarrow.compute as pc

        distinct = pc.unique(dataset.head(100_000, columns=["prediction"]).column(0).drop_null())
        return len(distinct) <= 2
    return True


def _scan_flagged(
    dataset: ds.Dataset,
    source: str,
    flt: ds.Expression,
    keys: list[str],
    time_col: str,
    conf: Confidence | None,
    min_confidence: float,
    reason_of: Any,
    extra: tuple[str, ...] = (),
) -> list[FlaggedPrediction]:
    names = dataset.schema.names
    wanted = ("request_id", *keys, "prediction", "model_version", time_col, "out_of_range", *extra)
    cols = [c for c in (*wanted, conf.column if conf else None) if c is not None and c in names]
    cols = list(dict.fromkeys(cols))
    out: list[FlaggedPrediction] = []
    for row in dataset.to_table(columns=cols, filter=flt).to_pylist():
        reasons = reason_of(row)
        value = row.get(conf.column) if conf else None
        confidence = conf.of(value) if conf else None
        if conf is not None and value is not None and confidence is not None and confidence < min_confidence:
            reasons.append(conf.reason(value, confidence, min_confidence))
        if not reasons:
            continue
        out.append(
            FlaggedPrediction(
                source=source,
                request_id=row.get("request_id"),
                keys={k: row[k] for k in keys if k in row},
                prediction=row.get("prediction"),
                reason="; ".join(reasons),
                model_version=row.get("model_version"),
                at=row.get(time_col),
                confidence=confidence,
            )
        )
    return out


def flagged(project: Project, *, limit: int | None = 50, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> ReviewList:
    """Predictions flagged for expert review, newest first, without those already labelled."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not 0.0 <= min_confidence <= 1.0:
        raise ReviewError(f"--min-confidence must be a number in [0, 1], got {min_confidence}")
    cfg = project.config
    keys = list(cfg.model.keys)
    rng = cfg.gate.prediction_range
    classifier = cfg.model.task == "classification"
    store = _store(project)
    notes: list[str] = []
    found: list[FlaggedPrediction] = []
    spec = None
    if classifier:
        try:
            spec = champion_spec(project)
        except LooplineError as exc:
            notes.append(f"the champion's label contract is unknown ({exc.message}); binary or not is guessed")
    span = f" [{rng[0]:g}, {rng[1]:g}]" if rng else ""

    if store.exists(PREDICTIONS):
        dataset = store.dataset(PREDICTIONS)
        names = dataset.schema.names
        missing = [k for k in keys if k not in names]
        if not keys or missing:
            notes.append(
                f"{PREDICTIONS}: rows cannot be labelled without the key columns model.keys "
                f"({'empty' if not keys else 'missing ' + ', '.join(missing)}); skipped"
            )
        else:
            conf = _confidence(dataset.schema, _binary(project, spec, dataset))
            conds = []
            if "out_of_range" in names:
                conds.append(ds.field("out_of_range") == pa.scalar(True))
            if conf:
                conds.append(conf.below(min_confidence))
            if conds:
                where = conds[0] if len(conds) == 1 else conds[0] | conds[1]
                what = "probability out of range" if classifier else "out of range"
                found += _scan_flagged(
                    dataset,
                    PREDICTIONS,
                    where,
                    keys,
                    "scored_at",
                    conf,
                    min_confidence,
                    lambda r: [f"{what}{span}"] if r.get("out_of_range") else [],
                )

    if store.exists(INFERENCE_LOG):
        dataset = store.dataset(INFERENCE_LOG)
        schema = dataset.schema
        conf = _confidence(schema, _binary(project, spec, dataset))
        checked = PROBABILITY if classifier else "prediction"
        numeric = _is_float(schema, checked)
        conds = []
        if numeric:
            p = ds.field(checked)
            conds.append(pc.is_nan(p))
            if rng:
                conds.append((p < pa.scalar(float(rng[0]))) | (p > pa.scalar(float(rng[1]))))
        if conf:
            conds.append(conf.below(min_confidence))
        if conds:
            where = conds[0]
            for c in conds[1:]:
                where = where | c

            def log_reason(r: dict[str, Any]) -> list[str]:
                v = r.get(checked)
                if not numeric or v is None:
                    return []
                if math.isnan(v):
                    return [f"{checked} is NaN"]
                if rng and not rng[0] <= v <= rng[1]:
                    return [f"{'probability ' if classifier else ''}out of range [{rng[0]:g}, {rng[1]:g}]"]
                return []

            log_keys = [k for k in keys if k in schema.names]
            found += _scan_flagged(
                dataset, INFERENCE_LOG, where, log_keys, "timestamp", conf, min_confidence, log_reason, (checked,)
            )

    ids, tuples = _labelled(store, keys)
    kept: list[FlaggedPrediction] = []
    seen: set[tuple[str, ...]] = set()
    found.sort(key=lambda f: f.at or datetime.min.replace(tzinfo=UTC), reverse=True)
    skipped = 0
    for f in found:
        key_t = tuple(_norm(f.keys[k]) for k in keys) if keys and all(f.keys.get(k) is not None for k in keys) else None
        if (f.request_id is not None and f.request_id in ids) or (key_t is not None and key_t in tuples):
            skipped += 1
            continue
        ident = (f.source, f.request_id or "", *(key_t or ()))
        if ident in seen:  # the same key scored by several batches: keep the newest
            continue
        seen.add(ident)
        kept.append(f)
    return ReviewList(items=kept[:limit] if limit else kept, total=len(kept), already_labelled=skipped, notes=notes)


# ----------------------------------------------------------------------------- label
def champion_spec(project: Project) -> LabelSpec | None:
    """The champion's label contract: its run's ``loopline.label`` tag, else the ``loopline`` metadata of its
    MLmodel; None when there is no champion (or it carries neither). An unreachable MLflow raises LooplineError."""
    from loopline import status, tracking
    from loopline.labels import LabelSpec

    if status._registry_db_missing(project):
        return None
    status._check_server(project)
    mv = tracking.alias_version(project, tracking.CHAMPION)
    if mv is None:
        return None
    import json

    from mlflow.exceptions import MlflowException

    stored: Any = None
    try:
        if mv.run_id:
            stored = tracking.client(project).get_run(str(mv.run_id)).data.tags.get("loopline.label")
            stored = json.loads(stored) if stored else None
    except (MlflowException, json.JSONDecodeError):
        stored = None
    if not isinstance(stored, dict):
        try:
            from mlflow.models import Model

            from loopline.context import context

            local = tracking.download(context(project), f"models:/{project.registered_model}/{mv.version}")
            meta = Model.load(local).metadata or {}
            stored = meta.get("loopline")
        except Exception:  # an artifact store that cannot be read: no contract, the fallback applies
            stored = None
    if isinstance(stored, dict) and stored.get("task"):
        return LabelSpec.from_dict(stored)
    return None


def _table_spec(project: Project, store: DeltaStore) -> LabelSpec:
    """Without a champion's contract: the label type of the feedback table (else of the stored predictions)."""
    from loopline.labels import LabelSpec, from_config, kind_of_arrow

    base = from_config(project.config.model)
    for table, column in ((FEEDBACK, "label"), (PREDICTIONS, "prediction"), (INFERENCE_LOG, "prediction")):
        if store.exists(table):
            schema = store.schema(table)
            if column in schema.names and not pa.types.is_null(schema.field(column).type):
                kind = kind_of_arrow(schema.field(column).type, "classification")
                return LabelSpec("classification", kind, (), base.positive, base.threshold, base.target)
    return base


def parse_label(project: Project, value: Any, spec: LabelSpec | None = None) -> Any:
    """The label as the model needs it: a finite number for regression; for a classifier one of the champion's
    classes in the target's type (int, bool or str), parsed with ``spec`` (its label contract)."""
    from loopline.labels import LabelValueError, from_config

    if project.config.model.task == "regression":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ReviewError(f"--label must be a number for a regression model, got {value!r}") from None
        if not math.isfinite(number):
            raise ReviewError(f"--label must be a finite number, got {value!r}")
        return number
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ReviewError("--label must not be empty")
    spec = spec or from_config(project.config.model)
    try:
        return spec.parse(value)
    except LabelValueError as exc:
        text = str(exc)
        if spec.classes and "classes" not in text:
            text += f"; the model's classes are {list(spec.classes)} (label type {spec.kind})"
        raise ReviewError(f"--label {text}", hint="label with one of the champion's classes") from None


def parse_keys(project: Project, pairs: list[str]) -> dict[str, str]:
    """``["id=3", ...]`` -> ``{"id": "3"}``, checked against model.keys (all of them, nothing else)."""
    keys = list(project.config.model.keys)
    if not keys:
        raise ReviewError(
            "--key needs model.keys in loopline.yaml, and it is empty",
            hint="label by --request-id instead, or declare model.keys",
        )
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ReviewError(f"--key must look like column=value, got {pair!r}")
        if name not in keys:
            raise ReviewError(f"--key {name}: {name!r} is not a key column", hint=f"the key columns are {keys}")
        out[name] = value
    missing = [k for k in keys if k not in out]
    if missing:
        raise ReviewError(
            f"--key must give every key column; missing {missing}", hint=" ".join(f"--key {k}=..." for k in keys)
        )
    return out


def _typed_filter(dataset: ds.Dataset, table: str, values: dict[str, str]) -> tuple[ds.Expression, dict[str, Any]]:
    """An equality filter on the key columns with each value cast to the column's type."""
    import pyarrow.dataset as pads

    flt: ds.Expression | None = None
    typed: dict[str, Any] = {}
    for name, text in values.items():
        want = dataset.schema.field(name).type
        try:
            scalar = pa.array([text]).cast(want)[0]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ReviewError(f"--key {name}={text}: not a valid {want} (the type of {table}.{name})") from None
        typed[name] = scalar.as_py()
        cond = pads.field(name) == scalar
        flt = cond if flt is None else flt & cond
    assert flt is not None
    return flt, typed


def _find_by_request_id(store: DeltaStore, request_id: str, keys: list[str]) -> dict[str, Any]:
    import pyarrow.dataset as ds

    if not store.exists(INFERENCE_LOG):
        raise ReviewError(
            f"unknown request id {request_id!r}: there is no inference_log table yet",
            hint="request ids come from `loopline review list` or the server's responses",
        )
    dataset = store.dataset(INFERENCE_LOG)
    cols = [c for c in ("request_id", *keys) if c in dataset.schema.names]
    hit = dataset.to_table(columns=cols, filter=ds.field("request_id") == request_id)
    if hit.num_rows == 0:
        raise ReviewError(
            f"unknown request id {request_id!r}: not in the inference_log table",
            hint="request ids come from `loopline review list` or the server's responses",
        )
    row = hit.slice(0, 1).to_pylist()[0]
    return {k: row[k] for k in keys if k in row and row[k] is not None}


def _find_by_keys(store: DeltaStore, values: dict[str, str]) -> dict[str, Any]:
    searched = []
    for table in (PREDICTIONS, INFERENCE_LOG):
        if not store.exists(table):
            continue
        dataset = store.dataset(table)
        if not all(k in dataset.schema.names for k in values):
            continue
        searched.append(table)
        flt, typed = _typed_filter(dataset, table, values)
        if dataset.to_table(columns=list(values), filter=flt).num_rows:
            return typed
    shown = " ".join(f"{k}={v}" for k, v in values.items())
    where = " or ".join(searched) if searched else "any table (no predictions or inference_log with those columns)"
    raise ReviewError(
        f"unknown key {shown}: no prediction with it in {where}", hint="keys come from `loopline review list`"
    )


def _conform(store: DeltaStore, table: pa.Table) -> pa.Table:
    """Cast columns to the existing feedback table's types (so the append never changes a column's type)."""
    if not store.exists(FEEDBACK):
        return table
    schema = store.schema(FEEDBACK)
    for i, name in enumerate(table.column_names):
        if name in schema.names and table.column(i).type != schema.field(name).type:
            want = schema.field(name).type
            try:
                table = table.set_column(i, name, table.column(i).cast(want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise ReviewError(f"{name}: the value does not fit the feedback table's column type {want}") from None
    return table


def label(
    project: Project,
    value: Any,
    *,
    request_id: str | None = None,
    keys: list[str] | dict[str, str] | None = None,
    note: str | None = None,
) -> LabelResult:
    """Record an expert's label for one prediction (by request id or by key) as a ``feedback`` row."""
    if (request_id is None) == (not keys):
        raise ReviewError(
            "give exactly one of --request-id ID or --key column=value",
            hint="see `loopline review list` for what to label",
        )
    store = _store(project)
    is_reg = project.config.model.task == "regression"
    spec = None if is_reg else (champion_spec(project) or _table_spec(project, store))
    lab = parse_label(project, value, spec)
    model_keys = list(project.config.model.keys)
    if request_id is not None:
        found = _find_by_request_id(store, request_id, model_keys)
    else:
        given = [f"{k}={v}" for k, v in keys.items()] if isinstance(keys, dict) else list(keys or [])
        found = _find_by_keys(store, parse_keys(project, given))
    cols: dict[str, pa.Array] = {"request_id": pa.array([request_id], type=pa.string())}
    for k, v in found.items():
        cols[k] = pa.array([v])
    cols["label"] = pa.array([lab], type=pa.float64() if spec is None else spec.arrow_type)
    cols["received_at"] = pa.array([datetime.now(UTC)], type=_TS)
    cols["_source"] = pa.array([REVIEW_SOURCE], type=pa.string())
    if note:
        cols["_note"] = pa.array([note], type=pa.string())
    table = _conform(store, pa.table(cols))
    try:
        version = store.append(FEEDBACK, table, writer="loopline.review")
    except TableError as exc:
        raise ReviewError(f"the label could not be written to the feedback table: {exc.message}") from None
    return LabelResult(row=table.to_pylist()[0], table_version=version)


# ----------------------------------------------------------------------------- clear
def clear(project: Project, reason: str | None = None) -> ClearResult:
    """Lift the needs-review flag (a human decision) and record it in ``registry_events``.

    The audit row has action ``review_cleared`` and an empty alias (no alias moved, so rollback
    ignores it). If the row cannot be written the flag is set back. Nothing is written when the
    flag was not set.
    """
    from loopline import status
    from loopline.registry import actor, events_schema

    who = actor()
    previous = status.clear_needs_review(project)
    text = reason or ""
    if previous is None:
        return ClearResult(cleared=False, previous_reason=None, actor=who, reason=text)
    full = f"needs review cleared (was: {previous})" + (f": {text}" if text else "")
    row: dict[str, Any] = {
        "timestamp": datetime.now(UTC),
        "actor": who,
        "model": project.registered_model,
        "alias": "",
        "from_version": None,
        "to_version": None,
        "action": REVIEW_CLEARED,
        "reason": full,
        "gate_verdict": "",
    }
    try:
        _store(project).append(
            REGISTRY_EVENTS,
            pa.Table.from_pylist([row], schema=events_schema()),
            action=REVIEW_CLEARED,
            model=project.registered_model,
        )
    except TableError as exc:
        status.set_needs_review(project, previous)
        raise ReviewError(f"the audit row could not be written, the review flag stays set: {exc.message}") from None
    return ClearResult(cleared=True, previous_reason=previous, actor=who, reason=full)
