"""Ingest: one source read -> one batch in the ``raw`` table (one commit, idempotent by batch id).

The source streams into a staging Parquet file while its content is hashed, so the batch id can be
derived from the data (``<source>-<sha256[:12]>``) without holding the batch in memory; then the
staged rows stream into ``raw`` with ``_batch_id``, ``_ingested_at`` and ``_source`` in one
``replace_batch`` commit. :func:`run_pipeline` chains ingest -> validate -> features for one batch.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.errors import SourceError
from loopline.sources import BATCH_ROWS, OpenedSource, open_source

if TYPE_CHECKING:
    from loopline.coerce import TypeTally
    from loopline.config import ContractConfig, Project
    from loopline.features import FeaturesResult
    from loopline.tables import DeltaStore
    from loopline.validate import ValidationReport

RESERVED = ("_batch_id", "_ingested_at", "_source")
TIMESTAMP = pa.timestamp("us", tz="UTC")
_HASH_ROWS = 8192
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,127}$")


@dataclass(frozen=True)
class IngestResult:
    """What one ingest wrote to ``raw``."""

    source: str
    batch_id: str
    rows: int
    columns: list[str]
    content_hash: str
    raw_version: int
    ingested_at: datetime


@dataclass(frozen=True)
class PipelineResult:
    """ingest -> validate -> features for one batch."""

    ingest: IngestResult
    validation: ValidationReport
    features: FeaturesResult

    def summary(self) -> str:
        return (
            f"batch {self.ingest.batch_id}: {self.ingest.rows} rows in, {self.validation.failing_rows} quarantined, "
            f"{self.features.rows} feature rows at features version {self.features.version}"
        )


def check_batch_id(batch_id: str) -> str:
    if not _BATCH_ID.match(batch_id):
        raise SourceError(
            f"batch id must be 1-128 letters, digits or _ . : = - (starting with a letter or digit), got {batch_id!r}"
        )
    return batch_id


class _ContentHash:
    """sha256 over the schema and the rows in fixed-size chunks (independent of how the reader batches)."""

    def __init__(self, schema: pa.Schema, extra: dict[str, Any]) -> None:
        self._h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
        self._h.update(schema.serialize().to_pybytes())
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0
        self._schema = schema

    def update(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._rows += batch.num_rows
        while self._rows >= _HASH_ROWS:
            table = pa.Table.from_batches(self._pending, schema=self._schema)
            self._digest(table.slice(0, _HASH_ROWS))
            rest = table.slice(_HASH_ROWS)
            self._pending, self._rows = rest.to_batches(), rest.num_rows

    def _digest(self, table: pa.Table) -> None:
        chunk = table.take(pa.array(range(table.num_rows), pa.int64()))  # fresh buffers: no slice offsets
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, chunk.schema) as writer:
            writer.write_table(chunk)
        self._h.update(sink.getvalue().to_pybytes())

    def hexdigest(self) -> str:
        if self._rows:
            self._digest(pa.Table.from_batches(self._pending, schema=self._schema))
            self._pending, self._rows = [], 0
        return self._h.hexdigest()


def _storable(schema: pa.Schema) -> pa.Schema:
    """Types Delta can store: null -> string, unsigned -> wider signed, ns timestamps -> us."""
    fields = []
    for f in schema:
        if f.name in RESERVED:
            continue
        t = f.type
        if pa.types.is_null(t):
            t = pa.string()
        elif pa.types.is_unsigned_integer(t):  # Delta has signed integers only
            t = {8: pa.int16(), 16: pa.int32()}.get(t.bit_width, pa.int64())
        elif pa.types.is_timestamp(t) and t.unit == "ns":
            t = pa.timestamp("us", tz=t.tz)
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def _stage(
    opened: OpenedSource, path: Path, contract: ContractConfig, tally: TypeTally
) -> tuple[pa.Schema, int, str, str | None]:
    """Stream the source, coerced to the contract's types, into a Parquet file; return (schema, rows,
    content hash, batch id from data)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from loopline.coerce import coerced_batches

    con = None
    try:
        source_schema, stream, con = coerced_batches(opened.reader, contract, tally, BATCH_ROWS)
        schema = _storable(source_schema)
        hasher = _ContentHash(schema, {"source": opened.name, "params": opened.params})
        named: set[str] = set()
        rows = 0
        with pq.ParquetWriter(path, schema) as writer:
            for batch in stream:
                if "_batch_id" in batch.schema.names:
                    named.update(str(v) for v in pc.unique(batch.column("_batch_id")).to_pylist() if v is not None)
                out = pa.Table.from_batches([batch]).select(schema.names).cast(schema, safe=False)
                for b in out.to_batches():
                    hasher.update(b)
                writer.write_table(out)
                rows += out.num_rows
    except SourceError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if opened.kind == "csv" and "CSV Error" in str(exc):
            from loopline.sources import csv_lines_error

            raise csv_lines_error(opened.name, opened.location, opened.options) or SourceError(
                f"source {opened.name!r}: reading {opened.location} failed: {text}"
            ) from None
        raise SourceError(f"source {opened.name!r}: reading {opened.location} failed: {text}") from None
    finally:
        if con is not None:
            con.close()
        opened.close()
    if len(named) > 1:
        raise SourceError(
            f"source {opened.name!r}: its `_batch_id` column holds {len(named)} values {sorted(named)[:5]}",
            hint="a source read is one batch: make `_batch_id` a single value or drop it",
        )
    return schema, rows, hasher.hexdigest(), next(iter(named), None)


def ingest(
    project: Project,
    source: str,
    *,
    store: DeltaStore,
    params: dict[str, Any] | None = None,
    batch_id: str | None = None,
    opened: OpenedSource | None = None,
    precheck: bool = False,
) -> IngestResult:
    """Read ``source`` into ``raw`` as one batch; re-ingesting a batch id replaces it (one commit).

    Contract columns land with the contract's types (:mod:`loopline.coerce`). ``opened``: rows already
    read (e.g. one window of a replayed history) instead of opening ``source``. ``precheck``: what the
    whole batch can fail (row count, missing or unexpected columns, a column of another type) is checked
    on the staged rows before anything is committed (``ValidationFailed``, the report saved)."""
    import pyarrow.parquet as pq

    from loopline.coerce import TEXT_KINDS, TypeTally

    contract = project.config.contract
    if batch_id is not None:
        check_batch_id(batch_id)
    text = [n for n, spec in contract.columns.items() if spec.type in TEXT_KINDS]
    opened = opened or open_source(project, source, params, text_columns=text)
    staging = project.state_dir / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    tally = TypeTally()
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        staged = Path(tmp) / "batch.parquet"
        schema, rows, digest, named = _stage(opened, staged, contract, tally)
        if rows == 0:
            given = f" with {', '.join(f'{k}={v}' for k, v in opened.params.items())}" if opened.params else ""
            raise SourceError(
                f"source {source!r} returned no rows{given}; nothing was ingested",
                hint="check the source's path/query and the --param values",
            )
        batch = batch_id or (check_batch_id(named) if named else f"{source}-{digest[:12]}")
        if precheck:
            from loopline.validate import precheck_batch

            precheck_batch(contract, batch, schema, rows, tally, reports_dir(project))
        now = datetime.now(UTC)
        out_schema = schema.append(pa.field("_batch_id", pa.string())).append(pa.field("_ingested_at", TIMESTAMP))
        out_schema = out_schema.append(pa.field("_source", pa.string()))

        def with_meta() -> Iterator[pa.RecordBatch]:
            for b in pq.ParquetFile(staged).iter_batches(batch_size=BATCH_ROWS):
                n = b.num_rows
                cols = [*b.columns, pa.repeat(pa.scalar(batch), n), pa.repeat(pa.scalar(now, TIMESTAMP), n)]
                cols.append(pa.repeat(pa.scalar(source), n))
                yield pa.RecordBatch.from_arrays(cols, schema=out_schema)

        reader = pa.RecordBatchReader.from_batches(out_schema, with_meta())
        version = store.replace_batch("raw", reader, batch, source=source, rows=rows, content_hash=digest)
    columns = [n for n in schema.names if n != "_type_errors"]
    return IngestResult(source, batch, rows, columns, digest, version, now)


def run_pipeline(
    project: Project,
    source: str,
    *,
    params: dict[str, Any] | None = None,
    batch_id: str | None = None,
    store: DeltaStore | None = None,
    on_stage: Callable[[str], None] | None = None,
    opened: OpenedSource | None = None,
) -> PipelineResult:
    """ingest -> validate -> features for one batch; raises ValidationFailed if the contract stops it."""
    from loopline.features import build_features
    from loopline.tables import DeltaStore
    from loopline.validate import validate_batch

    store = store or DeltaStore(project.storage_root, project.storage_options)

    def step(name: str) -> None:
        # Arrow's allocator keeps what a stage freed for reuse: handed back between stages, a stage's peak is
        # not carried into the next one (RSS would otherwise grow with the batch)
        pa.default_memory_pool().release_unused()
        if on_stage is not None:
            on_stage(name)

    step("ingest")
    ingested = ingest(project, source, store=store, params=params, batch_id=batch_id, opened=opened, precheck=True)
    step("validate")
    outcome = validate_batch(
        project.config.contract, store, ingested.batch_id, root=project.root, reports_dir=reports_dir(project)
    )
    step("features")
    feats = build_features(
        project.config.features,
        store,
        outcome.rows,
        ingested.batch_id,
        root=project.root,
        time_column=project.config.model.time_column,
    )
    outcome.rows.close()
    pa.default_memory_pool().release_unused()
    return PipelineResult(ingested, outcome.report, feats)


def reports_dir(project: Project) -> Path:
    return project.state_dir / "reports"


def default_source(project: Project) -> str:
    """The first source under ``sources:``."""
    if not project.config.sources:
        raise SourceError(f"{project.config_path.name} defines no `sources`", hint="add one under `sources:`")
    return next(iter(project.config.sources))


def ingest_job(
    project: Project,
    *,
    source: str | None = None,
    params: dict[str, Any] | list[str] | None = None,
    batch_id: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> PipelineResult:
    """The `ingest` job: :func:`run_pipeline` on ``source`` (default: the first configured)."""
    from loopline.sources import parse_params

    name = source or default_source(project)
    if isinstance(params, list):
        params = parse_params(params, name)
    return run_pipeline(project, name, params=params, batch_id=batch_id, on_stage=on_stage)
