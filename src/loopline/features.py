"""Features: the user's hook (``features.hook``, ``module:function(df) -> df``) on a validated batch.

The result lands in the ``features`` table (``replace_batch`` by default, or ``append``) with
``_batch_id`` kept, and the Delta version written is returned so training can pin it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from loopline.errors import HookError
from loopline.hooks import load_hook

if TYPE_CHECKING:
    import pandas as pd

    from loopline.config import FeaturesConfig
    from loopline.tables import DeltaStore
    from loopline.validate_stream import StagedRows

TABLE = "features"


@dataclass(frozen=True)
class FeaturesResult:
    """What one features build wrote."""

    batch_id: str
    rows: int
    columns: list[str]
    version: int
    mode: str
    table: str = TABLE


def apply_hook(config: FeaturesConfig, frame: pd.DataFrame, root: Path | None = None) -> pd.DataFrame:
    """Run ``features.hook`` on ``frame`` (identity when none is configured)."""
    import pandas as pd

    if config.hook is None:
        return frame.copy()
    fn = load_hook(config.hook, "features.hook", root)
    try:
        out = fn(frame.copy())
    except Exception as exc:
        raise HookError(
            f"features.hook {config.hook} raised {type(exc).__name__}: {exc}",
            hint="run the hook on a sample of the batch in a test to debug it",
        ) from exc
    if not isinstance(out, pd.DataFrame):
        raise HookError(
            f"features.hook {config.hook} must return a pandas DataFrame, got {type(out).__name__}",
            hint="the hook is `function(df: pd.DataFrame) -> pd.DataFrame`",
        )
    return out


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """A DataFrame as an Arrow table Delta can store (timestamps in microseconds)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_timestamp(t) and t.unit == "ns":
            t = pa.timestamp("us", tz=t.tz)
        elif pa.types.is_null(t):
            t = pa.string()
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields), safe=False)


def build_features(
    config: FeaturesConfig,
    store: DeltaStore,
    frame: pd.DataFrame | StagedRows,
    batch_id: str,
    *,
    root: Path | None = None,
    time_column: str | None = None,
) -> FeaturesResult:
    """Apply the hook to the validated rows of ``batch_id`` and write them to ``features``.

    Without a hook, staged rows stream into the table (bounded memory); a hook gets the whole batch as
    one DataFrame."""
    from loopline.validate_stream import StagedRows

    if isinstance(frame, StagedRows):
        reader = frame.reader()
        if config.hook is None and reader is not None:
            return _stream(config, store, reader, batch_id)
        frame = frame.frame()
    out = apply_hook(config, frame.drop(columns=[c for c in frame.columns if c == "_batch_id"]), root)
    if (
        time_column
        and time_column in frame.columns
        and time_column not in out.columns
        and len(out) == len(frame)
        and out.index.equals(frame.index)
    ):
        out.insert(0, time_column, frame[time_column])
    out = out.assign(_batch_id=batch_id)
    table = to_arrow(out)
    if config.mode == "append":
        version = store.append(TABLE, table, batch_id=batch_id)
    else:
        version = store.replace_batch(TABLE, table, batch_id)
    return FeaturesResult(batch_id, table.num_rows, table.column_names, version, config.mode)


def _stream(config: FeaturesConfig, store: DeltaStore, reader: pa.RecordBatchReader, batch_id: str) -> FeaturesResult:
    """The identity features of staged rows, streamed with ``_batch_id`` in one commit."""
    schema = reader.schema.append(pa.field("_batch_id", pa.string()))
    counted = [0]

    def batches() -> Iterator[pa.RecordBatch]:
        for b in reader:
            counted[0] += b.num_rows
            yield pa.RecordBatch.from_arrays([*b.columns, pa.repeat(pa.scalar(batch_id), b.num_rows)], schema=schema)

    data = pa.RecordBatchReader.from_batches(schema, batches())
    if config.mode == "append":
        version = store.append(TABLE, data, batch_id=batch_id)
    else:
        version = store.replace_batch(TABLE, data, batch_id)
    return FeaturesResult(batch_id, counted[0], schema.names, version, config.mode)
