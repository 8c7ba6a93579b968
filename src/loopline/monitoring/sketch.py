"""Streaming summaries of a table's columns, built in one pass over Arrow record batches.

* numeric: exact count, nulls, mean, variance (Chan's parallel update), min, max; a uniform random
  sample of at most ``sample_size`` values: a reservoir keyed by seeded random numbers, one per row,
  drawn in row order, so the sample does not depend on how the rows are split into batches; and,
  when bin edges are given, exact counts in those bins.
* categorical / boolean / all-null: exact counts per value (booleans as ``true`` / ``false``).

Null and NaN values count as nulls (the server logs a missing float input as NaN). Values no statistic
can use are *excluded and counted* (``NumericSketch.excluded``), never an error: infinite values,
integers beyond +-2**53 (float64 cannot hold them exactly; the server refuses them since, but older rows
may hold them) and floats beyond +-1e100 (their squares would overflow the moments). Nothing holds more
than one batch plus the samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopline.errors import MonitoringError

Kind = Literal["numeric", "categorical", "boolean", "null"]
DEFAULT_SAMPLE_SIZE = 100_000
PSI_BINS = 10
EXACT_INT = 2**53  # integers beyond it are not exact in float64 (the server refuses them: serving.schema)
MAX_ABS_FLOAT = 1e100  # beyond it the sum of squares of a column can overflow float64
EXCLUDED = "not finite, integers beyond +-2**53, floats beyond +-1e100"


def column_kind(dtype: pa.DataType) -> Kind | None:
    """The drift kind of an Arrow type, or None when loopline does not monitor that type."""
    if pa.types.is_dictionary(dtype):
        return column_kind(dtype.value_type)
    if pa.types.is_null(dtype):
        return "null"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "categorical"
    return None


def infer_kinds(schema: pa.Schema, columns: Iterable[str]) -> tuple[dict[str, Kind], dict[str, str]]:
    """Kinds of ``columns`` in ``schema``; second value: skipped columns with the reason."""
    kinds: dict[str, Kind] = {}
    skipped: dict[str, str] = {}
    for name in columns:
        if name not in schema.names:
            skipped[name] = "not in the reference table"
            continue
        kind = column_kind(schema.field(name).type)
        if kind is None:
            skipped[name] = f"type {schema.field(name).type} is not monitored"
        else:
            kinds[name] = kind
    return kinds, skipped


# ----------------------------------------------------------------------------- streaming profiles
@dataclass
class NumericSketch:
    """Exact moments plus a bounded uniform sample of one numeric column."""

    capacity: int
    rows: int = 0
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    edges: np.ndarray | None = None
    hist: np.ndarray | None = None
    excluded: int = 0  # values left out of every statistic (see the module docstring), counted

    @property
    def nulls(self) -> int:
        return self.rows - self.count - self.excluded

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    @property
    def exact(self) -> bool:
        """True when the sample holds every value."""
        return self.count <= self.capacity

    def update(self, values: np.ndarray, keys: np.ndarray, rows: int) -> None:
        self.rows += rows
        n = int(values.size)
        if n == 0:
            return
        b_mean = float(values.mean())
        b_m2 = float(((values - b_mean) ** 2).sum())
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        if self.edges is not None and self.hist is not None:
            self.hist += np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=self.hist.size)
        if self.sample.size >= self.capacity:
            keep = keys < self.keys.max()
            values, keys = values[keep], keys[keep]
        sample = np.concatenate([self.sample, values])
        skeys = np.concatenate([self.keys, keys])
        if sample.size > self.capacity:
            idx = np.argpartition(skeys, self.capacity - 1)[: self.capacity]
            sample, skeys = sample[idx], skeys[idx]
        self.sample, self.keys = sample, skeys


@dataclass
class CategoricalSketch:
    """Exact counts per value (booleans as ``true`` / ``false``)."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def nulls(self) -> int:
        return self.rows - self.count

    def update(self, arr: pa.Array) -> None:
        self.rows += len(arr)
        if arr.null_count == len(arr):
            return
        vc = pc.value_counts(arr)
        for value, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True):
            if value is None:
                continue
            key = ("true" if value else "false") if isinstance(value, bool) else str(value)
            self.counts[key] = self.counts.get(key, 0) + int(n)


Sketch = NumericSketch | CategoricalSketch


@dataclass
class Profile:
    """The summary of one side: rows seen and one sketch per column."""

    rows: int
    kinds: dict[str, Kind]
    sketches: dict[str, Sketch]

    def edges(self, bins: int = PSI_BINS) -> dict[str, np.ndarray]:
        """Interior reference-quantile bin edges per numeric column (for the current side's histograms)."""
        out: dict[str, np.ndarray] = {}
        for name, sk in self.sketches.items():
            if isinstance(sk, NumericSketch) and sk.sample.size:
                qs = np.quantile(sk.sample, np.linspace(0, 1, bins + 1)[1:-1])
                out[name] = np.unique(qs)
        return out


class Profiler:
    """Feed record batches with :meth:`update`; read the :class:`Profile` with :meth:`result`."""

    def __init__(
        self,
        kinds: Mapping[str, Kind],
        *,
        edges: Mapping[str, np.ndarray] | None = None,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        seed: int = 0,
    ) -> None:
        self.kinds = dict(kinds)
        self.rows = 0
        self._rng = np.random.default_rng(seed)
        self.sketches: dict[str, Sketch] = {}
        for name, kind in self.kinds.items():
            if kind == "numeric":
                sk = NumericSketch(capacity=sample_size)
                if edges is not None and name in edges:
                    sk.edges = np.asarray(edges[name], dtype=np.float64)
                    sk.hist = np.zeros(sk.edges.size + 1, dtype=np.int64)
                self.sketches[name] = sk
            else:
                self.sketches[name] = CategoricalSketch()

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        n = batch.num_rows
        if n == 0:
            return
        self.rows += n
        keys = self._rng.random(n)
        names = batch.schema.names
        for name, sk in self.sketches.items():
            col = batch.column(names.index(name)) if name in names else None
            if isinstance(sk, NumericSketch):
                if col is None:
                    sk.update(np.empty(0), np.empty(0), n)
                    continue
                values, valid, excluded = _numeric(name, col)
                sk.excluded += excluded
                sk.update(values, keys if valid is None else keys[valid], n)
            else:
                if col is None:
                    sk.rows += n
                    continue
                sk.update(_categorical(name, col, self.kinds[name]))

    def consume(self, batches: Iterable[pa.RecordBatch]) -> Profiler:
        for b in batches:
            self.update(b)
        return self

    def result(self) -> Profile:
        return Profile(rows=self.rows, kinds=dict(self.kinds), sketches=self.sketches)


def profile(
    batches: Iterable[pa.RecordBatch],
    kinds: Mapping[str, Kind],
    *,
    edges: Mapping[str, np.ndarray] | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> Profile:
    """One streaming pass over ``batches``."""
    return Profiler(kinds, edges=edges, sample_size=sample_size, seed=seed).consume(batches).result()


def _combine(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _numeric(name: str, col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Usable float64 values of a column, the mask of their rows (None = every row) and how many non-null,
    non-NaN values were excluded (infinite, or beyond what the statistics can use: module docstring)."""
    arr = _combine(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return np.empty(0), np.zeros(len(arr), dtype=bool), 0
    limit = EXACT_INT if pa.types.is_integer(arr.type) else MAX_ABS_FLOAT
    if arr.type != pa.float64():
        numeric = pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type)
        try:  # numbers: never refused (an int64 of 2**63-1 becomes 9.2e18, then is excluded below)
            arr = pc.cast(arr, pa.float64(), safe=not numeric)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise MonitoringError(
                f"column {name!r} is numeric in the reference but {arr.type} in the current window, "
                "and its values are not numbers",
                hint="the production inputs must have the types the model was trained on",
            ) from None
    values = arr.to_numpy(zero_copy_only=False)
    if arr.null_count:
        values = np.where(np.asarray(arr.is_valid()), values, np.nan)
    with np.errstate(invalid="ignore"):
        valid = np.abs(values) <= limit  # False for NaN and +-inf
    if valid.all():
        return values, None, 0
    excluded = int(valid.size - valid.sum() - np.isnan(values).sum())
    return values[valid], valid, excluded


def _categorical(name: str, col: pa.Array | pa.ChunkedArray, kind: Kind) -> pa.Array:
    arr = _combine(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if kind == "boolean" and not pa.types.is_boolean(arr.type) and not pa.types.is_null(arr.type):
        try:
            return pc.cast(arr, pa.bool_())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if not (pa.types.is_string(arr.type) or pa.types.is_boolean(arr.type) or pa.types.is_null(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr
