"""Wire formats: the MLflow scoring protocol, and :class:`Parsed`, what every protocol's parser gives.

Parsing turns a request body into :class:`Parsed` (typed column arrays in signature order, the
row count, optional params, passthrough key columns); encoding turns predictions back into the
protocol's response. Nothing here touches the model or the network. The Open Inference Protocol V2
is in :mod:`loopline.serving.protocol_v2`.

MLflow (``POST /invocations``): JSON with exactly one of ``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs`` (+ optional ``params``), or ``text/csv`` with a header line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from loopline.serving.errors import InputError, UnsupportedMediaType
from loopline.serving.schema import Signature, convert_columns

if TYPE_CHECKING:
    pass

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_FORMATS_TEXT = "exactly one of dataframe_split, dataframe_records, instances, inputs"


@dataclass
class Parsed:
    columns: dict[str, np.ndarray]
    n: int
    params: dict[str, Any] | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)  # lists; the event time: datetime64
    raw_frame: dict[str, list[Any]] | None = None  # only for models without a column signature
    v2_id: str | None = None
    v2_binary_output: bool = False  # the request's default for its outputs (binary_data_output)
    v2_outputs: list[tuple[str, bool | None]] | None = None  # requested outputs: name, its own binary_data


# ----------------------------------------------------------------------------- MLflow scoring
def parse_mlflow(body: bytes, content_type: str | None, sig: Signature, keys: tuple[str, ...] = ()) -> Parsed:
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype in ("application/json", "application/*+json", "", "*/*"):
        return parse_mlflow_json(body, sig, keys)
    if ctype in ("text/csv", "application/csv"):
        return parse_csv(body, sig, keys)
    raise UnsupportedMediaType(f"unsupported Content-Type {content_type!r}; send application/json or text/csv")


def load_json(body: bytes) -> Any:
    if not body.strip():
        raise InputError(f"empty request body; send a JSON object with {_FORMATS_TEXT}")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InputError("the request body is not UTF-8 text") from None
    except ValueError as exc:
        raise InputError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None


def parse_mlflow_json(body: bytes, sig: Signature, keys: tuple[str, ...] = ()) -> Parsed:
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise InputError(f"the JSON body must be an object with {_FORMATS_TEXT}; got a {type(obj).__name__}")
    present = [k for k in MLFLOW_FORMATS if k in obj]
    if len(present) != 1:
        got = ", ".join(present) if present else "none of them"
        raise InputError(f"the JSON body must have {_FORMATS_TEXT} (got {got})")
    unknown = [k for k in obj if k not in MLFLOW_FORMATS and k != "params"]
    if unknown:
        raise InputError(f"unknown field(s) {unknown}; allowed: {', '.join(MLFLOW_FORMATS)}, params")
    params = obj.get("params")
    if params is not None and not isinstance(params, dict):
        raise InputError(f"params must be an object of name: value, got {type(params).__name__}")
    fmt = present[0]
    raw, n = _columns_of(fmt, obj[fmt], sig, keys)
    return _finish(raw, n, sig, keys, params=params)


def _finish(
    raw: dict[str, Any],
    n: int,
    sig: Signature,
    keys: tuple[str, ...],
    *,
    params: dict[str, Any] | None = None,
    from_text: bool = False,
) -> Parsed:
    passthrough = {k: list(raw[k]) for k in keys if k in raw and k not in sig.names}
    if not sig.columns:
        if n == 0:
            raise InputError("the payload has no rows; send at least one")
        return Parsed({}, n, params, passthrough, raw_frame={k: list(v) for k, v in raw.items()})
    cols = convert_columns(sig, raw, n, from_text=from_text)
    return Parsed(cols, n, params, passthrough)


def _columns_of(fmt: str, data: Any, sig: Signature, keys: tuple[str, ...] = ()) -> tuple[dict[str, Any], int]:
    """Any of the four MLflow JSON layouts -> {column: values}, row count."""
    if fmt == "dataframe_split":
        if not isinstance(data, dict):
            raise InputError('dataframe_split must be an object {"columns": [...], "data": [[...], ...]}')
        rows = data.get("data")
        columns = data.get("columns")
        if not isinstance(rows, list):
            raise InputError("dataframe_split.data must be a list of rows")
        if columns is None:
            columns = sig.names
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InputError("dataframe_split.columns must be a list of column names")
        return _rows_to_columns(rows, columns, "dataframe_split.data"), len(rows)
    if fmt == "dataframe_records":
        if not isinstance(data, list):
            raise InputError("dataframe_records must be a list of {column: value} objects")
        return _records_to_columns(data, sig, "dataframe_records", keys), len(data)
    # instances / inputs: records, rows, a single column, or {column: values}
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        n = -1
        for name, values in data.items():
            vals = values if isinstance(values, list) else [values]
            if n not in (-1, len(vals)):
                raise InputError(f"{fmt}.{name} has {len(vals)} values, other columns have {n}")
            n = len(vals)
            out[name] = vals
        return out, max(n, 0)
    if not isinstance(data, list):
        raise InputError(f"{fmt} must be a list of rows or an object of column: values")
    if not data:
        return {}, 0
    if all(isinstance(r, dict) for r in data):
        return _records_to_columns(data, sig, fmt, keys), len(data)
    if all(isinstance(r, list) for r in data):
        return _rows_to_columns(data, sig.names, fmt), len(data)
    if len(sig.columns) == 1 and not any(isinstance(r, (list, dict)) for r in data):
        return {sig.columns[0].name: data}, len(data)
    raise InputError(f"{fmt} must be a list of objects (records) or a list of lists (rows in signature order)")


def _rows_to_columns(rows: list[Any], columns: list[str], where: str) -> dict[str, Any]:
    width = len(columns)
    if not columns and rows:
        raise InputError(f"{where}: no column names (the model has no signature; send dataframe_split.columns)")
    for i, r in enumerate(rows):
        if not isinstance(r, list):
            raise InputError(f"{where}[{i}] must be a list of {width} values, got {type(r).__name__}")
        if len(r) != width:
            raise InputError(f"{where}[{i}] has {len(r)} values, expected {width} ({', '.join(columns)})")
    if not rows:
        return {c: [] for c in columns}
    return {c: list(v) for c, v in zip(columns, zip(*rows, strict=True), strict=True)}


def _records_to_columns(records: list[Any], sig: Signature, where: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    if sig.columns:
        names = list(sig.names) + [k for k in keys if k not in sig.names]
    else:
        names = []
        for r in records:
            if isinstance(r, dict):
                names.extend(k for k in r if k not in names)
    required = {c.name for c in sig.columns if c.required}
    out: dict[str, list[Any]] = {c: [] for c in names}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InputError(f"{where}[{i}] must be an object of column: value, got {type(r).__name__}")
        for c in names:
            if c in r:
                out[c].append(r[c])
            elif c in required:
                raise InputError(f"{where}[{i}]: missing column {c!r}; the model needs: {', '.join(sig.names)}")
            else:
                out[c].append(None)
    # a column missing from every record is absent, not a column of nulls
    return {c: v for c, v in out.items() if records and any(c in r for r in records)}


def parse_csv(body: bytes, sig: Signature, keys: tuple[str, ...] = ()) -> Parsed:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the CSV body is not UTF-8 text") from None
    if not text.strip():
        raise InputError("empty CSV body; send a header line and at least one row")
    try:
        lines = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}") from None
    lines = [ln for ln in lines if ln]
    header, rows = lines[0], lines[1:]
    if len(set(header)) != len(header):
        raise InputError(f"malformed CSV: duplicate column names in the header {header}")
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise InputError(f"malformed CSV: line {i + 2} has {len(r)} fields, the header has {len(header)}")
    raw = {c: [r[j] for r in rows] for j, c in enumerate(header)}
    return _finish(raw, len(rows), sig, keys, from_text=True)


def encode_predictions(preds: np.ndarray | list[Any]) -> list[Any]:
    values = preds.tolist() if isinstance(preds, np.ndarray) else list(preds)
    return [_clean(v) for v in values] if _has_nonfinite(preds) else values


def _has_nonfinite(preds: Any) -> bool:
    return isinstance(preds, np.ndarray) and preds.dtype.kind == "f" and not bool(np.isfinite(preds).all())


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v
