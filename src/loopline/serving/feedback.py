"""``POST /feedback``: labels appended to the ``feedback`` table in one Delta commit per call.

The response says ``ok`` only after the commit, so an ok is durable. Request ids are checked against
this worker's log buffer, the rows staged in the spill folder and ``inference_log``; unknown ones are
accepted and listed (the prediction may still sit in another worker's buffer, or the label may arrive
before a batch is logged).

Labels are parsed at the edge to the served model's label type (:meth:`LabelSpec.parse`: ``1``,
``1.0``, ``"1"`` for an int target; ``true``, ``"true"``, ``"True"``, ``1``/``0`` for a bool target)
and stored in the ``label`` column with that Arrow type (int64, bool, string; float64 for
regression). A label that is not one of the model's classes, or not of its type, is a 422 naming the
value and the classes, and nothing of the request is stored. Before a model is loaded, the type comes
from the features table's target column (and any value of that type is taken).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import TypeAdapter, ValidationError

from loopline.errors import TableError
from loopline.labels import LabelSpec, LabelValueError, kind_of_arrow
from loopline.serving.errors import Conflict, InputError, Unavailable, Unprocessable
from loopline.serving.openapi import FeedbackItem

if TYPE_CHECKING:
    from loopline.serving.dataplane import DataPlane

TABLE = "feedback"
TS = pa.timestamp("us", tz="UTC")
_ADAPTER: TypeAdapter[FeedbackItem | list[FeedbackItem]] = TypeAdapter(FeedbackItem | list[FeedbackItem])


def label_spec(S: DataPlane) -> LabelSpec:
    """What a label must be: the served model's label contract; before a model is loaded, the type of the
    features table's target column (any value of that type)."""
    model = S.holder.current
    if model is not None:
        return model.spec
    m = S.project.config.model
    if m.task == "regression":
        return LabelSpec("regression", "float", target=m.target)
    try:
        schema = S.store.schema("features") if S.store.exists("features") else None
    except (TableError, OSError, pa.ArrowException):
        schema = None
    if schema is None or m.target not in schema.names:
        raise Unavailable(
            "no model is loaded yet and the features table has no target column "
            f"{m.target!r} (model.target) to take the label type from; retry when the server is ready"
        )
    return LabelSpec(m.task, kind_of_arrow(schema.field(m.target).type, m.task), target=m.target)


def _label(value: Any, spec: LabelSpec, where: str) -> Any:
    """One label parsed to the model's type; a 422 naming the value and the model's classes otherwise."""
    try:
        label = spec.parse(value)
        if spec.kind == "int" and not -(2**63) <= label < 2**63:
            raise LabelValueError(f"{value!r} is out of range for an int64 label")
        return label
    except LabelValueError as exc:
        if not spec.is_classifier:
            raise Unprocessable(f"{where}.label: must be a number for a regression model, got {value!r}") from None
        message = str(exc)
        if "classes" not in message:
            known = f"one of the model's classes {list(spec.classes)}" if spec.classes else "a label of that type"
            message = f"{message}; expected {known} (label type {spec.kind})"
        raise Unprocessable(f"{where}.label: {message}") from None


_UNION_MEMBERS = ("bool", "int", "float", "str", "none")  # pydantic's tags of a label / key value union


def _invalid(exc: ValidationError, body: bytes) -> InputError:
    """The first problem of the body's own shape (an item or a list of items) as a 4xx naming the field."""
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return InputError(f"malformed JSON: {errors[0]['msg']}")
    branch = "list[FeedbackItem]" if body.lstrip().startswith(b"[") else "FeedbackItem"
    err = next((e for e in errors if e["loc"] and e["loc"][0] == branch), errors[0])
    loc = [p for p in err["loc"] if p not in ("FeedbackItem", "list[FeedbackItem]")]
    if len(loc) >= 2 and loc[-1] in _UNION_MEMBERS:  # a label or key value: one message, not one per member
        value = err.get("input")
        got = "null" if value is None else type(value).__name__.replace("dict", "object")
        return Unprocessable(f"{_where(loc[:-1])}: must be a boolean, a number or a string, got {got}")
    return Unprocessable(f"{_where(loc)}: {err['msg']}")


def _where(loc: list[Any]) -> str:
    """A pydantic location as this module names fields: ``[1].label``, ``keys.zip``, ``body``."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "body"


def _json_number(v: float) -> str:
    """How JSON wrote a non-finite number (Python's ``inf`` reads oddly in an API message)."""
    return "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"


def parse_items(body: bytes, keys: tuple[str, ...], spec: LabelSpec | Callable[[], LabelSpec]) -> list[FeedbackItem]:
    """The request's items, each ``label`` parsed to ``spec``'s type (all of them, or a 422: nothing is
    stored). ``spec`` may be a function, called once the body is known to be well formed."""
    if not body.strip():
        raise InputError('empty request body; send {"request_id": ..., "label": ...} or a list of them')
    try:
        parsed = _ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc, body) from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise Unprocessable("the list of feedback items is empty")
    for i, it in enumerate(items):
        where = f"[{i}]" if isinstance(parsed, list) else "body"
        if it.request_id is None and not it.keys:
            raise Unprocessable(f"{where}: needs request_id or keys")
        if it.keys:
            unknown = sorted(set(it.keys) - set(keys))
            if unknown:
                hint = f"the key columns are {list(keys)}" if keys else "model.keys is empty in loopline.yaml"
                raise Unprocessable(f"{where}.keys: {unknown} are not key columns ({hint})")
        if isinstance(it.label, float) and not math.isfinite(it.label):
            raise Unprocessable(f"{where}.label: {_json_number(it.label)} is not a label (not a finite number)")
        for k, v in (it.keys or {}).items():
            if isinstance(v, float) and not math.isfinite(v):
                raise Unprocessable(f"{where}.keys.{k}: {_json_number(v)} is not a key value (not a finite number)")
    typed = spec if isinstance(spec, LabelSpec) else spec()
    for i, it in enumerate(items):
        where = f"[{i}]" if isinstance(parsed, list) else "body"
        items[i] = it.model_copy(update={"label": _label(it.label, typed, where)})
    return items


def build_table(items: list[FeedbackItem], keys: tuple[str, ...], spec: LabelSpec) -> pa.Table:
    """Parsed items (:func:`parse_items`) as feedback rows; ``label`` in the label's own Arrow type."""
    now = datetime.now(UTC)
    cols: dict[str, pa.Array] = {"request_id": pa.array([it.request_id for it in items], type=pa.string())}
    for k in keys:
        values = [(it.keys or {}).get(k) for it in items]
        if any(v is not None for v in values):
            try:
                cols[k] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[k] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    cols["label"] = pa.array([it.label for it in items], type=spec.arrow_type)
    stamps = []
    for it in items:
        ts = it.received_at or now
        stamps.append(ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC))
    cols["received_at"] = pa.array(stamps, type=TS)
    cols["_source"] = pa.array(["api"] * len(items), type=pa.string())
    return pa.table(cols)


def _reference(S: DataPlane) -> tuple[pa.Schema | None, bool]:
    """The schema feedback columns must match: the feedback table's own, else (first write) the key
    columns' types in ``predictions`` or ``features`` so that monitoring can join on them. The flag
    says whether the reference is binding (the feedback table itself)."""
    if S.feedback_schema is None and S.store.exists(TABLE):
        S.feedback_schema = S.store.schema(TABLE)
    if S.feedback_schema is not None:
        return S.feedback_schema, True
    for name in ("predictions", "features"):
        try:
            if S.store.exists(name):
                return S.store.schema(name), False
        except (TableError, OSError):
            continue
    return None, False


def _cast(col: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray:
    try:
        return col.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if pa.types.is_timestamp(want) and want.tz is not None and pa.types.is_string(col.type):
            import pyarrow.compute as pc

            naive = col.cast(pa.timestamp(want.unit))  # ISO strings without an offset are taken as UTC
            return pc.assume_timezone(naive, "UTC").cast(want)
        raise


def _text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _check_label_type(S: DataPlane, schema: pa.Schema, table: pa.Table) -> pa.Table:
    """The feedback table's ``label`` must have the model's label type: never a silent cast (409 otherwise)."""
    have, want = schema.field("label").type, table.schema.field("label").type
    if have == want:
        return table
    if _text(have) and _text(want):
        return table.set_column(table.column_names.index("label"), "label", table.column("label").cast(have))
    S.feedback_schema = None  # re-read next time: the table may be migrated meanwhile
    raise Conflict(
        f"the feedback table's label column is {have}, but the model's labels are {want}; labels "
        "of another label type cannot be stored in it (migrate or rename the feedback table)"
    )


def _conform(S: DataPlane, table: pa.Table) -> pa.Table:
    """Cast columns to the reference types; a value that cannot be is the client's 422 when the
    feedback table already fixes the type, and is stored as sent otherwise. ``label`` is never cast."""
    schema, binding = _reference(S)
    if schema is None:
        return table
    if binding and "label" in schema.names and "label" in table.column_names:
        table = _check_label_type(S, schema, table)
    for name in table.column_names:
        if name not in schema.names or name in ("received_at", "_source", "label"):
            continue
        if not binding and name not in S.keys:
            continue
        want = schema.field(name).type
        col = table.column(name)
        if col.type == want:
            continue
        try:
            table = table.set_column(table.column_names.index(name), name, _cast(col, want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if binding:
                raise Unprocessable(f"keys.{name}: values must be {want} like the feedback table's column") from None
    return table


def known_ids(S: DataPlane, ids: list[str]) -> set[str]:
    wanted = set(ids)
    found = S.logger.buffered_ids(wanted) if S.logger is not None else set()
    if S.logger is not None:  # in the order rows move: buffer, spill folder, table
        found |= S.logger.staged_ids(wanted - found)
    rest = wanted - found
    if rest:
        import pyarrow.compute as pc

        try:
            if S.store.exists("inference_log"):
                hit = S.store.dataset("inference_log").to_table(
                    columns=["request_id"], filter=pc.field("request_id").isin(pa.array(sorted(rest)))
                )
                found.update(hit.column("request_id").to_pylist())
        except (TableError, OSError, pa.ArrowException):
            pass
    return found


def _store_sync(S: DataPlane, body: bytes) -> dict[str, Any]:
    typed: list[LabelSpec] = []

    def spec() -> LabelSpec:  # once the body is well formed: a malformed one is a 4xx even before a model loads
        if not typed:
            typed.append(label_spec(S))
        return typed[0]

    items = parse_items(body, S.keys, spec)
    table = _conform(S, build_table(items, S.keys, spec()))
    ids = [it.request_id for it in items if it.request_id is not None]
    known = known_ids(S, ids) if ids else set()
    try:
        version = S.store.append(TABLE, table, writer="loopline.serving.feedback")
    except TableError as exc:
        S.feedback_schema = None
        raise Unavailable(f"the feedback table could not be written; retry: {exc.message}") from None
    unknown = [i for i in ids if i not in known]
    S.metrics.feedback.labels("true").inc(len(ids) - len(unknown))
    S.metrics.feedback.labels("false").inc(len(unknown))
    if len(items) > len(ids):
        S.metrics.feedback.labels("keys").inc(len(items) - len(ids))
    return {"status": "ok", "accepted": len(items), "unknown_request_ids": unknown, "table_version": version}


async def store_feedback(S: DataPlane, body: bytes) -> dict[str, Any]:
    return await asyncio.to_thread(_store_sync, S, body)
