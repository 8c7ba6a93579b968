"""Rows of the prediction log: one request's predictions (``Entry``), PII redaction and the Arrow
table in the ``inference_log`` layout (docs/contracts.md) that a flush commits.

``prediction`` has the label's own Arrow type (float64 for regression; int64, bool or string for
classifiers); a classifier's rows also carry ``probability`` (float64: P(positive class) for a
binary model, else P(predicted class)) and ``probabilities`` (``map<label type, float64>``: every
class), null when the model gives no probabilities: the layout of :func:`loopline.labels.output_arrays`
(the ``predictions`` table's), built here for many requests at once from the arrays each request
already has (a few vectorized calls per flush).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from loopline.errors import ServingError
from loopline.labels import LabelKind, LabelSpec, arrow_type

TS = pa.timestamp("us", tz="UTC")
BASE_COLUMNS = (
    "request_id",
    "timestamp",
    "model_name",
    "model_version",
    "endpoint",
    "status",
    "latency_ms",
    "prediction",
)


@dataclass
class Entry:
    """One request's predictions (n rows)."""

    request_ids: list[str]
    ts_us: int
    model_name: str
    model_version: str
    endpoint: str
    latency_ms: float
    predictions: np.ndarray
    inputs: dict[str, np.ndarray]
    passthrough: dict[str, Any] = field(default_factory=dict)  # lists; the event time: datetime64
    status: int = 200
    proba: np.ndarray | None = None  # classifiers: (n, n_classes), columns in spec.classes order
    probability: np.ndarray | None = None  # classifiers: (n,), spec.score
    spec: LabelSpec | None = None  # the model's label contract (shared by all entries of a version)


class Redactor:
    """``serving.log.redact``: hash (sha256 of salt + value, hex) or drop columns before they are written."""

    def __init__(self, rules: Mapping[str, str], salt_env: str) -> None:
        self.rules = dict(rules)
        self.salt = b""
        if any(v == "hash" for v in self.rules.values()):
            salt = os.environ.get(salt_env)
            if not salt:
                raise ServingError(
                    f"serving.log.redact hashes {[k for k, v in self.rules.items() if v == 'hash']}, "
                    f"but the salt variable {salt_env} is not set",
                    hint=f"export {salt_env}=<a long random secret> (keep it stable: it makes hashes joinable)",
                )
            self.salt = salt.encode()

    def hash(self, value: Any) -> str:
        return hashlib.sha256(self.salt + str(value).encode()).hexdigest()

    def apply(self, table: pa.Table) -> pa.Table:
        for col, how in self.rules.items():
            if col not in table.column_names:
                continue
            i = table.column_names.index(col)
            if how == "drop":
                table = table.remove_column(i)
            else:
                values = table.column(i).to_pylist()
                hashed = [None if v is None else self.hash(v) for v in values]
                table = table.set_column(i, col, pa.array(hashed, type=pa.string()))
        return table


def _arrow(values: np.ndarray | list[Any]) -> pa.Array:
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            return _arrow(values.tolist())
        if values.dtype.kind == "M":
            return pa.array(values.astype("datetime64[us]")).cast(TS)
        return pa.array(values)
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_null(arr.type):
        return arr.cast(pa.string())
    return arr


def build_table(entries: list[Entry], task: str, redactor: Redactor) -> pa.Table:
    """Buffered entries -> one Arrow table in the ``inference_log`` layout (docs/contracts.md)."""
    steps = build_steps(entries, task, redactor)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def build_steps(entries: list[Entry], task: str, redactor: Redactor) -> Generator[None, None, pa.Table]:
    """``build_table`` one column at a time: yields between columns, returns the table.

    Written for the common batch (one-row requests with the same typed columns): per-entry work is
    list comprehensions, then one conversion per column (~0.1-0.4 ms each for 1,000 rows). The
    server's flush runs the steps on the event loop with requests served in between: built on another
    thread, the conversions (single C calls over Python objects that keep the GIL) stalled the loop
    by up to a whole build."""
    counts = [len(e.request_ids) for e in entries]
    total = sum(counts)
    take = None if total == len(entries) else pa.array(np.repeat(np.arange(len(entries)), counts))

    def per_entry(values: list[Any], typ: pa.DataType) -> pa.Array:
        arr = pa.array(values, type=typ)
        return arr if take is None else arr.take(take)

    ids: list[str] = (
        [i for e in entries for i in e.request_ids] if take is not None else [e.request_ids[0] for e in entries]
    )
    cols: dict[str, pa.Array] = {"request_id": pa.array(ids, type=pa.string())}
    yield
    cols["timestamp"] = per_entry([e.ts_us for e in entries], pa.int64()).cast(TS)
    cols["model_name"] = per_entry([e.model_name for e in entries], pa.string())
    cols["model_version"] = per_entry([e.model_version for e in entries], pa.string())
    yield
    cols["endpoint"] = per_entry([e.endpoint for e in entries], pa.string())
    cols["status"] = per_entry([e.status for e in entries], pa.int64())
    cols["latency_ms"] = per_entry([e.latency_ms for e in entries], pa.float64())
    yield
    preds = [np.asarray(e.predictions) for e in entries]
    if task == "regression":
        kinds = {(p.ndim, p.dtype.kind) for p in preds}
        if all(nd == 1 and k in "fiub" for nd, k in kinds):
            cols["prediction"] = pa.array(np.concatenate(preds).astype(np.float64))
        else:
            cols["prediction"] = pa.array([str(v) for p in preds for v in p.tolist()], type=pa.string())
        yield
    else:
        yield from _classifier_columns(entries, preds, cols)
    names: dict[str, None] = {}  # input columns in the order they are first seen
    for keys in dict.fromkeys((*e.inputs, *e.passthrough) for e in entries):  # few distinct key sets
        names.update((k, None) for k in keys if k not in cols)
    for name in names:
        cols[name] = _input_column(name, entries, counts)
        yield
    table = pa.table(cols)
    assert table.num_rows == total
    return redactor.apply(table)


_KINDS: dict[str, LabelKind] = {"b": "bool", "i": "int", "u": "int", "f": "float"}


def _kind(e: Entry, preds: np.ndarray) -> LabelKind:
    return e.spec.kind if e.spec is not None else _KINDS.get(preds.dtype.kind, "str")


def _classifier_columns(
    entries: list[Entry], preds: list[np.ndarray], cols: dict[str, pa.Array]
) -> Generator[None, None, None]:
    """``prediction``, ``probability`` and ``probabilities`` of classifier entries into ``cols``."""
    spec = entries[0].spec
    with_proba = [e.proba is not None and e.probability is not None for e in entries]
    if spec is not None and all(e.spec is spec for e in entries) and all(with_proba) and spec.classes:
        # the common flush: one model version, every request with probabilities
        labels = np.concatenate(preds)
        cols["prediction"] = _labels(labels, spec.arrow_type)
        yield
        cols["probability"] = pa.array(np.concatenate([e.probability for e in entries]), type=pa.float64())  # type: ignore[misc]
        proba = np.concatenate([e.proba for e in entries])  # type: ignore[misc]
        cols["probabilities"] = _proba_map(proba, pa.array(list(spec.classes), type=spec.arrow_type))
        yield
        return
    # several versions (a reload between flushes) or requests without probabilities: entry by entry
    kinds = {_kind(e, p) for e, p in zip(entries, preds, strict=True)}
    typ = arrow_type(kinds.pop()) if len(kinds) == 1 else pa.string()
    as_text = pa.types.is_string(typ)
    cols["prediction"] = _concat(
        [_labels(np.asarray([str(v) for v in p.tolist()], dtype=object) if as_text else p, typ) for p in preds]
    )
    yield
    map_type = pa.map_(typ, pa.float64())
    if not any(with_proba):  # a model without probabilities: the columns are there, null (as in predictions)
        cols["probability"] = pa.nulls(len(cols["prediction"]), pa.float64())
        cols["probabilities"] = pa.nulls(len(cols["prediction"]), map_type)
        yield
        return
    probability: list[pa.Array] = []
    maps: list[pa.Array] = []
    for e, p, ok in zip(entries, preds, with_proba, strict=True):
        classes = list(e.spec.classes) if e.spec is not None else []
        if not ok or e.proba is None or e.proba.shape != (len(p), len(classes)):
            probability.append(pa.nulls(len(p), pa.float64()))
            maps.append(pa.nulls(len(p), map_type))
            continue
        probability.append(pa.array(e.probability, type=pa.float64()))
        keys = [str(c) if as_text else c for c in classes]
        maps.append(_proba_map(e.proba, pa.array(keys, type=typ)))
    cols["probability"] = pa.concat_arrays(probability)
    cols["probabilities"] = pa.concat_arrays(maps)
    yield


def _labels(labels: np.ndarray, typ: pa.DataType) -> pa.Array:
    try:
        return pa.array(labels, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not what the label contract says: kept, as text
        return pa.array([None if v is None else str(v) for v in labels.tolist()], type=pa.string())


def _proba_map(proba: np.ndarray, keys: pa.Array) -> pa.Array:
    """A (n, k) probability matrix as ``map<label, float64>`` rows: offsets, the classes repeated, the values."""
    n, k = proba.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    repeated = keys.take(pa.array(np.tile(np.arange(k, dtype=np.int32), n)))
    values = pa.array(np.ascontiguousarray(proba, dtype=np.float64).reshape(-1))
    return pa.MapArray.from_arrays(offsets, repeated, values, type=pa.map_(keys.type, pa.float64()))


def _input_column(name: str, entries: list[Entry], counts: list[int]) -> pa.Array:
    same = [e.inputs.get(name) for e in entries]
    try:
        dtypes = {a.dtype for a in same}  # type: ignore[union-attr]
    except AttributeError:  # missing in some entries, or a list
        dtypes = set()
    if len(dtypes) == 1 and dtypes.pop().kind not in "OM":
        return pa.array(np.concatenate(same))  # type: ignore[arg-type]  # the common case: one conversion
    parts: list[pa.Array] = []
    for e, n in zip(entries, counts, strict=True):
        if name in e.inputs:
            parts.append(_arrow(e.inputs[name]))
        elif name in e.passthrough:  # key columns sent beside the inputs: stored as strings
            parts.append(passthrough_array(e.passthrough[name]))
        else:
            parts.append(pa.nulls(n))
    return _concat(parts)


def passthrough_array(values: list[Any] | np.ndarray) -> pa.Array:
    """Columns sent beside the inputs, as the log stores them: key columns as text (cast to the table's type
    on commit), the event-time column (``schema.event_times``: datetime64) as a UTC timestamp."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        return pa.array(values.astype("datetime64[us]")).cast(TS)
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def check_passthrough(passthrough: Mapping[str, Any], schema: pa.Schema | None) -> None:
    """Key values sent beside the inputs must fit ``inference_log``'s column of that name (text when the
    table has none yet): a value that does not would send the whole flush of rows to ``rejected/``. A 422
    naming the key, the value and the type otherwise."""
    from loopline.serving.errors import Unprocessable

    for name, values in passthrough.items():
        for i, v in enumerate(values if isinstance(values, list) else []):  # event times: checked already
            if v is None:
                continue
            if not isinstance(v, (str, int, float)):
                raise Unprocessable(
                    f"key column {name!r}: {_shown(v)} at row {i} is not a key value (a string or a number)"
                )
            if isinstance(v, float) and not math.isfinite(v):
                raise Unprocessable(f"key column {name!r}: {v!r} at row {i} is not a key value (not a finite number)")
        if schema is None or name not in schema.names:
            continue
        want = schema.field(name).type
        try:
            passthrough_array(values).cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            for i, v in enumerate(values):
                try:
                    passthrough_array([v]).cast(want)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise Unprocessable(
                        f"key column {name!r}: {_shown(v)} at row {i} does not fit inference_log's {name!r} column, "
                        f"which is {want}"
                    ) from None


_SIGNATURE_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "datetime": TS,
}


def logged_types(columns: Mapping[str, str], redact: Mapping[str, str]) -> dict[str, pa.DataType]:
    """The Arrow type each input column (``name: signature kind``) is logged with, after redaction."""
    out = {name: _SIGNATURE_TYPES[kind] for name, kind in columns.items() if kind in _SIGNATURE_TYPES}
    for name, how in redact.items():
        if how == "hash":
            out[name] = pa.string()
        else:
            out.pop(name, None)
    return out


def _never_fits(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether logged values of type ``got`` can fail to cast to the table's ``want`` (conform's cast)."""
    if got == want:
        return False
    text = pa.types.is_string(want) or pa.types.is_large_string(want)
    if text:
        return False  # anything is written as text
    if pa.types.is_string(got) or pa.types.is_large_string(got):
        return True  # text into numbers, booleans, timestamps
    if pa.types.is_floating(got) and pa.types.is_integer(want):
        return True  # 2.5 into an int64 column
    numeric = pa.types.is_integer(got) or pa.types.is_floating(got) or pa.types.is_boolean(got)
    wanted = pa.types.is_integer(want) or pa.types.is_floating(want) or pa.types.is_boolean(want)
    return not (numeric and wanted)


def schema_conflicts(schema: pa.Schema, logged: Mapping[str, pa.DataType]) -> list[str]:
    """Columns whose logged type ``inference_log`` cannot take (every such row would go to ``rejected/``)."""
    return [
        f"{name!r} is logged as {got} but inference_log stores it as {schema.field(name).type}"
        for name, got in logged.items()
        if name in schema.names and _never_fits(got, schema.field(name).type)
    ]


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    for i, name in enumerate(table.column_names):
        if name in schema.names:
            want = schema.field(name).type
            col = table.column(i)
            if col.type != want:
                try:
                    table = table.set_column(i, name, col.cast(want))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    pass  # leave it; the write reports the conflict
    return table


def _concat(parts: list[pa.Array]) -> pa.Array:
    types = {p.type for p in parts if not pa.types.is_null(p.type)}
    if not types:
        return pa.nulls(sum(len(p) for p in parts), pa.string())
    if len(types) == 1:
        t = types.pop()
        return pa.concat_arrays([p.cast(t) for p in parts])
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        return pa.concat_arrays([p.cast(pa.float64()) for p in parts])
    return pa.concat_arrays([p.cast(pa.string()) for p in parts])


def misfit(table: pa.Table, schema: pa.Schema) -> str | None:
    """Why ``table`` can never be appended to a table of ``schema`` (a shared column of a type that does
    not cast), or None. New columns are fine: the log's schema grows."""
    for name in table.column_names:
        if name in schema.names:
            want = schema.field(name).type
            got = table.schema.field(name).type
            if got != want and not pa.types.is_null(got):
                return f"column {name!r} is {got}, the table has {want}"
    return None
