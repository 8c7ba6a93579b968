"""The model's input signature, and turning raw request columns into typed arrays.

Every check a request needs before ``predict`` lives here, so that the MLflow scoring protocol,
CSV and the Open Inference Protocol V2 all give the same 4xx with the same message for the same
problem: a missing column, a value of the wrong type, NaN / null in an integer column, an
infinite number, an empty payload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopline.serving.errors import InputError, Unprocessable

NUMERIC = {"double", "float", "long", "integer", "boolean"}
_DTYPES: dict[str, Any] = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": object,
    "binary": object,
    "datetime": "datetime64[us]",
}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# the model reads numbers as float64 (the fast path's matrix, scikit-learn, LightGBM, monitoring), which
# holds every integer exactly only up to 2**53: an int64 beyond it would be predicted on as another number
EXACT_INT = 2**53
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT64_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # double, float, long, integer, boolean, string, binary, datetime, or "any"
    required: bool = True

    @property
    def dtype(self) -> Any:
        return _DTYPES.get(self.kind, object)


@dataclass(frozen=True)
class Signature:
    """The columns a model takes, in order; ``columns`` is empty when the model has no column schema."""

    columns: tuple[Column, ...]
    has_params: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def all_numeric(self) -> bool:
        return bool(self.columns) and all(c.kind in NUMERIC for c in self.columns)

    @classmethod
    def from_pyfunc(cls, pyfunc: Any) -> Signature:
        meta = pyfunc.metadata
        schema = meta.get_input_schema()
        params = meta.get_params_schema() if hasattr(meta, "get_params_schema") else None
        cols: list[Column] = []
        if schema is not None and not schema.is_tensor_spec():
            for spec in schema.inputs:
                kind = getattr(spec.type, "name", None) or "any"
                cols.append(Column(str(spec.name), kind if kind in _DTYPES else "any", bool(spec.required)))
        return cls(tuple(cols), has_params=params is not None)


def _row_hint(i: int) -> str:
    return f" at row {i}"


def convert_column(col: Column, values: list[Any] | np.ndarray, *, from_text: bool = False) -> np.ndarray:
    """One column's raw values (JSON scalars, or CSV strings when ``from_text``) -> a typed array."""
    if isinstance(values, np.ndarray):
        return _convert_array(col, values)
    kind = col.kind
    if from_text:
        values = [_parse_text(col, v, i) for i, v in enumerate(values)]
    if kind in ("double", "float"):
        for i, v in enumerate(values):
            t = type(v)
            if t is float:
                if v in (math.inf, -math.inf):
                    raise _unrepresentable(col, v, i, f"infinite; expected a finite {kind}")
                if kind == "float" and abs(v) > _FLOAT32_MAX:
                    raise _unrepresentable(col, v, i, "out of range for float (32-bit)")
            elif t is int:
                if abs(v) > (_FLOAT64_MAX if kind == "double" else _FLOAT32_MAX):
                    raise _unrepresentable(col, v, i, f"out of range for {kind}")
            elif v is not None:
                raise InputError(f"column {col.name!r}: {_show(v)}{_row_hint(i)} is {_kind_of(v)}, expected {kind}")
        return np.array([math.nan if v is None else v for v in values], dtype=col.dtype)
    if kind in ("long", "integer"):
        lo, hi = _INT32 if kind == "integer" else _INT64
        out: list[int] = []
        for i, v in enumerate(values):
            t = type(v)
            if t is int:
                iv = v
            elif t is float and math.isfinite(v) and v.is_integer():
                iv = int(v)
            elif v is None or (t is float and math.isnan(v)):
                raise _unrepresentable(col, "null/NaN" if v is None else "NaN", i, f"in an integer ({kind}) column")
            elif t is float:
                why = "not an integer" if math.isfinite(v) else "infinite"
                raise _unrepresentable(col, v, i, f"{why}; expected {kind}")
            else:
                raise InputError(f"column {col.name!r}: {_show(v)}{_row_hint(i)} is {_kind_of(v)}, expected {kind}")
            if not lo <= iv <= hi:
                raise _unrepresentable(col, iv, i, f"out of range for {kind}")
            if abs(iv) > EXACT_INT:
                raise _unrepresentable(col, iv, i, _BEYOND_EXACT)
            out.append(iv)
        return np.array(out, dtype=col.dtype)
    if kind == "boolean":
        for i, v in enumerate(values):
            if type(v) is not bool:
                raise InputError(f"column {col.name!r}: {_show(v)}{_row_hint(i)} is {_kind_of(v)}, expected boolean")
        return np.array(values, dtype=np.bool_)
    if kind == "string":
        for i, v in enumerate(values):
            if not isinstance(v, str) and not (v is None and not col.required):
                raise InputError(f"column {col.name!r}: {_show(v)}{_row_hint(i)} is {_kind_of(v)}, expected string")
        return np.array(values, dtype=object)
    if kind == "datetime":
        try:
            return np.array(values, dtype="datetime64[us]")
        except (ValueError, TypeError):
            raise InputError(f"column {col.name!r}: expected ISO-8601 datetimes, got {_show(values[0])}...") from None
    return np.array(values, dtype=object)


def _convert_array(col: Column, arr: np.ndarray) -> np.ndarray:
    """A column already decoded as a typed array (V2 binary/typed tensors)."""
    kind = col.kind
    if kind in ("double", "float"):
        if arr.dtype.kind not in "fiu":
            raise InputError(f"column {col.name!r}: got {arr.dtype} data, expected {kind}")
        with np.errstate(over="ignore"):
            out = arr.astype(col.dtype, copy=False)
        _first_bad(col, arr, np.isinf(out), f"infinite or out of range; expected a finite {kind}")
        return out
    if kind in ("long", "integer"):
        if arr.dtype.kind == "f":
            _first_bad(col, arr, np.isnan(arr), f"in an integer ({kind}) column")
            _first_bad(col, arr, ~np.isfinite(arr) | (arr != np.floor(arr)), f"not an integer; expected {kind}")
        elif arr.dtype.kind not in "iu":
            raise InputError(f"column {col.name!r}: got {arr.dtype} data, expected {kind}")
        lo, hi = _INT32 if kind == "integer" else (-EXACT_INT, EXACT_INT)
        with np.errstate(invalid="ignore"):
            wide = arr.astype(np.float64)  # uint64 and int64 alike, no wrap-around
        _first_bad(
            col, arr, (wide < lo) | (wide > hi), f"out of range for {kind}" if kind == "integer" else _BEYOND_EXACT
        )
        return arr.astype(col.dtype)
    if kind == "boolean":
        if arr.dtype.kind != "b":
            raise InputError(f"column {col.name!r}: got {arr.dtype} data, expected boolean")
        return arr
    if kind == "string":
        if arr.dtype.kind not in "OUS":
            raise InputError(f"column {col.name!r}: got {arr.dtype} data, expected string")
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()], dtype=object)
    return arr


_BEYOND_EXACT = (
    f"beyond +-2**53 ({EXACT_INT}): the model reads numbers as float64, which cannot hold this integer exactly"
)


def _unrepresentable(col: Column, value: Any, i: int, why: str) -> InputError:
    shown = value if isinstance(value, str) and value in ("null/NaN", "NaN") else _show(value)
    return Unprocessable(f"column {col.name!r}: {shown}{_row_hint(i)} is {why}")


def _first_bad(col: Column, arr: np.ndarray, bad: np.ndarray, why: str) -> None:
    """A 422 naming the first value of ``arr`` where ``bad`` is set (nothing when none is)."""
    if bad.any():
        i = int(np.argmax(bad))
        v = arr[i].item()
        raise _unrepresentable(col, "NaN" if isinstance(v, float) and math.isnan(v) else v, i, why)


def _parse_text(col: Column, v: Any, i: int) -> Any:
    if not isinstance(v, str):
        return v
    kind = col.kind
    s = v.strip()
    if kind in ("double", "float"):
        if s == "" or s.lower() in ("nan", "null", "na"):
            return None
        try:
            return float(s)
        except ValueError:
            raise InputError(f"column {col.name!r}: {v!r}{_row_hint(i)} is not a number, expected {kind}") from None
    if kind in ("long", "integer"):
        if s == "" or s.lower() in ("nan", "null", "na"):
            return None
        try:
            return int(s)
        except ValueError:
            try:
                return float(s)
            except ValueError:
                raise InputError(f"column {col.name!r}: {v!r}{_row_hint(i)} is not an integer") from None
    if kind == "boolean":
        low = s.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise InputError(f"column {col.name!r}: {v!r}{_row_hint(i)} is not a boolean (true/false)")
    return v


def _kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def convert_columns(sig: Signature, raw: dict[str, Any], n: int, *, from_text: bool = False) -> dict[str, np.ndarray]:
    """Check presence and type of every signature column; return typed arrays in signature order."""
    if n == 0:
        raise InputError("the payload has no rows; send at least one")
    out: dict[str, np.ndarray] = {}
    for col in sig.columns:
        values = raw.get(col.name)
        if values is None:
            if col.required:
                raise InputError(f"missing column {col.name!r}; the model needs: {', '.join(sig.names)}")
            continue
        out[col.name] = convert_column(col, values, from_text=from_text)
    return out


def event_times(name: str, values: list[Any]) -> np.ndarray:
    """The event-time column (``model.time_column``) sent beside the inputs: ISO-8601 text (naive = UTC) ->
    ``datetime64[us]`` in UTC (NaT for null), so the log holds a timestamp that event-time windows can
    read; anything else is a 422 naming the column, row and value."""
    from datetime import UTC, datetime

    out = np.empty(len(values), dtype="datetime64[us]")
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.datetime64("NaT")
            continue
        try:
            if not isinstance(v, str):
                raise ValueError
            t = datetime.fromisoformat(v)
        except ValueError:
            raise Unprocessable(
                f"column {name!r}: {_show(v)}{_row_hint(i)} is not an ISO-8601 datetime (model.time_column)"
            ) from None
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        out[i] = np.datetime64(t.replace(tzinfo=None), "us")
    return out
