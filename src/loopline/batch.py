"""Batch predictions, local engine: champion model x input table -> one Delta commit of `predictions`.

The input (``batch.input`` table at a pinned version, or ``batch.query`` DuckDB SQL over the tables)
streams as Arrow record batches of at most ``batch.batch_size`` rows; each batch is checked, predicted
and turned into ``predictions`` rows (see docs/contracts.md), and the whole stream is written by one
``replace_where`` commit on ``_batch_id``. Memory therefore stays bounded by a few record batches, a
rerun of a batch id replaces its rows, and a failure anywhere (bad value, model error, crash) leaves
the previous table version untouched: never duplicates, never half a batch.

The spark engine (:mod:`loopline.batch_spark`) reuses the checks and the row building below.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loopline.display import repr_html
from loopline.errors import BatchError, LooplineError, TableError
from loopline.tables import DeltaStore, batches

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.runtime import ModelRuntime, Output

PREDICTIONS = "predictions"
INPUT_BATCH = "_input_batch_id"
ProgressFn = Callable[[int, int | None], None]
"""Called as ``progress(rows_done, rows_total_or_None)`` after each scored record batch."""

# signature type -> (arrow type the column is cast to, test whether an arrow type can be taken)
_ACCEPTS: dict[str, tuple[pa.DataType | None, Callable[[pa.DataType], bool]]] = {
    "double": (pa.float64(), lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
    "float": (pa.float32(), lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
    "long": (pa.int64(), lambda t: pa.types.is_integer(t) and not t.equals(pa.uint64())),
    "integer": (pa.int32(), lambda t: t in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16())),
    "boolean": (pa.bool_(), pa.types.is_boolean),
    "string": (
        pa.string(),
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
    ),
    "binary": (pa.binary(), lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    "datetime": (None, lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t)),
}
_NO_NULLS = {"long", "integer", "boolean"}  # pandas cannot hold nulls in these without changing the type


@dataclass(frozen=True)
class BatchResult:
    """What one batch-scoring job did."""

    _repr_html_ = repr_html  # the notebook view: loopline.display

    batch_id: str
    rows: int
    out_of_range: int
    model_name: str
    model_version: str
    run_id: str
    input: str
    input_version: int | None
    table_version: int
    engine: str
    seconds: float
    load_seconds: float = 0.0  # resolving @champion and loading the model (part of ``seconds``)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Champion:
    """The model version holding ``@champion``, loaded once (the runtime serving and the gate use too)."""

    name: str
    version: str
    run_id: str
    uri: str
    runtime: ModelRuntime

    @property
    def spec(self) -> LabelSpec:
        return self.runtime.spec


@dataclass(frozen=True)
class ModelInputs:
    """The columns the model reads, in order, and the signature type of each (None = not checked)."""

    columns: list[str]
    types: dict[str, str | None] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()


@dataclass
class InputStream:
    """The rows to score: a name for messages, a pinned version, the stream and its size if known."""

    name: str
    version: int | None
    reader: pa.RecordBatchReader
    total: int | None


# ----------------------------------------------------------------------------- model
def load_champion(project: Project) -> Champion:
    """Resolve ``models:/<registered>@champion`` to a version and load exactly that version."""
    from loopline import runtime, tracking
    from loopline.context import context
    from loopline.labels import from_config

    mv = tracking.require_champion(project)  # RegistryError naming the model when there is none
    uri = f"models:/{mv.name}/{mv.version}"  # pinned: an alias moved mid-job cannot mix two versions
    try:
        rt = runtime.load(
            uri,
            from_config(project.config.model),
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or "",
            ctx=context(project),
        )
    except runtime.RuntimeLoadError as exc:
        raise BatchError(
            f"cannot load the champion {mv.name} version {mv.version} ({tracking.model_uri(project)}): {exc}",
            hint="check the model's artifacts and that its flavor's library is installed",
        ) from exc
    return Champion(name=mv.name, version=str(mv.version), run_id=mv.run_id or "", uri=uri, runtime=rt)


def model_inputs(project: Project, rt: ModelRuntime, available: list[str]) -> ModelInputs:
    """Input columns from the model signature (column-based), else from ``model.features`` / the table."""
    if rt.signature.columns:
        types = {c.name: (c.kind if c.kind in _ACCEPTS else None) for c in rt.signature.columns}
        optional = frozenset(c.name for c in rt.signature.columns if not c.required)
        return ModelInputs(list(types), types, optional)
    return ModelInputs(project.config.model.input_columns(available))


def carried(project: Project, schema: pa.Schema) -> list[str]:
    """Columns copied into ``predictions`` beside the output: ``model.keys``, ``model.time_column`` when the
    input has it (monitoring windows on event time), and the input rows' own ``_batch_id`` (written as
    ``_input_batch_id``: the lineage monitoring follows back to the scored ``features`` rows)."""
    keys = list(project.config.model.keys)
    tc = project.config.model.time_column
    out = keys + ([tc] if tc and tc not in keys and tc in schema.names else [])
    return out + (["_batch_id"] if "_batch_id" in schema.names and "_batch_id" not in out else [])


def check_schema(schema: pa.Schema, inputs: ModelInputs, keys: list[str], where: str) -> list[str]:
    """Raise BatchError for a missing key/input column or a type the signature cannot take.

    Returns the columns to read: keys then inputs (each once, optional inputs only if present).
    """
    names = schema.names
    for k in keys:
        if k not in names:
            raise BatchError(
                f"{where} has no key column {k!r} (model.keys)",
                hint=f"its columns: {', '.join(names)}",
            )
    missing = [c for c in inputs.columns if c not in names and c not in inputs.optional]
    if missing:
        raise BatchError(
            f"{where} is missing the model input column(s) {missing}",
            hint=f"the model was trained on {inputs.columns}; {where} has {names}",
        )
    for c in inputs.columns:
        sig = inputs.types.get(c)
        if c not in names or sig is None:
            continue
        got = schema.field(c).type
        if pa.types.is_dictionary(got):
            got = got.value_type
        if not _ACCEPTS[sig][1](got):
            raise BatchError(
                f"column {c!r} of {where} is {got}, but the model's signature needs {sig}",
                hint=f"cast {c!r} to a {sig}-compatible type in the features step (or batch.query)",
            )
    wanted = list(dict.fromkeys([*keys, *(c for c in inputs.columns if c in names)]))
    return wanted


def _model_frame_columns(batch: pa.RecordBatch, inputs: ModelInputs, where: str) -> dict[str, pa.Array]:
    """The batch's input columns cast to the signature's types; nulls where pandas can't hold them -> error."""
    out: dict[str, pa.Array] = {}
    for c in inputs.columns:
        if c not in batch.schema.names:
            continue
        col = batch.column(c)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        sig = inputs.types.get(c)
        if sig is not None:
            if sig in _NO_NULLS and col.null_count:
                raise BatchError(
                    f"column {c!r} of {where} has {col.null_count} null value(s); the model's signature needs "
                    f"{sig} without nulls",
                    hint="fill or drop the nulls in the features step, or train with a float column",
                )
            target = _ACCEPTS[sig][0]
            if target is not None and not col.type.equals(target):
                try:
                    col = col.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise BatchError(f"column {c!r} of {where} cannot be cast to {sig}: {exc}") from None
        out[c] = col
    return out


class Predictor:
    """Predicts one Arrow record batch through the champion's runtime (labels and, for classifiers,
    probabilities), on the fastest path the runtime verified at load (a float64 matrix for numeric
    inputs and for loopline's categorical-input pipelines, whose text columns stay Arrow arrays for
    the encoder; a DataFrame for other models that encode text columns; else the pyfunc)."""

    def __init__(self, champion: Champion, inputs: ModelInputs, where: str, fast: bool = True) -> None:
        import dataclasses

        rt = champion.runtime
        if not fast and rt.path != "pyfunc":
            rt = dataclasses.replace(rt, path="pyfunc", estimator=None, compiled=False)
        self.runtime = rt
        self.inputs = inputs
        self.where = where

    @property
    def fast(self) -> bool:
        return self.runtime.fast

    def __call__(self, batch: pa.RecordBatch) -> Output:
        from loopline.runtime import NonNumericOutput, OutputShapeError

        cols = _model_frame_columns(batch, self.inputs, self.where)
        n = batch.num_rows
        text = self.runtime.encoder.text if self.runtime.encoder is not None else frozenset()
        arrays = {c: a if c in text else a.to_numpy(zero_copy_only=False) for c, a in cols.items()}
        try:
            return self.runtime.predict(arrays, n)
        except (OutputShapeError, NonNumericOutput) as exc:
            raise BatchError(f"{exc} (batch of {n} rows from {self.where})") from None
        except LooplineError:
            raise
        except Exception as exc:
            raise BatchError(
                f"the model raised on a batch of {n} rows from {self.where}: {type(exc).__name__}: {exc}"
            ) from exc


def workers() -> int:
    """Prediction threads for the fast path: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def predict_stream(
    predict: Predictor, source: Iterable[pa.RecordBatch], threads: int | None = None
) -> Iterator[tuple[pa.RecordBatch, Output]]:
    """(batch, predictions) in input order.

    On the fast (matrix) path the estimator predicts several batches at once, one thread each,
    with OpenMP limited to one thread per call (the results are the same: each row is predicted by
    the same code). Many short OpenMP parallel regions per batch (one per tree in gradient boosting)
    stall whenever one of their threads is descheduled; whole batches per thread do not, and they
    overlap with reading and writing. At most ``2 * threads`` batches are in flight (bounded memory).
    Other models (pyfunc path) predict one batch at a time in the calling thread.
    """
    threads = workers() if threads is None else threads
    if not predict.fast or threads <= 1:
        for rb in source:
            yield rb, predict(rb)
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    pending: deque[tuple[pa.RecordBatch, Future[Output]]] = deque()
    with threadpool_limits(1, user_api="openmp"), ThreadPoolExecutor(threads, "loopline-predict") as pool:
        try:
            for rb in source:
                pending.append((rb, pool.submit(predict, rb)))
                if len(pending) >= 2 * threads:
                    done, fut = pending.popleft()
                    yield done, fut.result()
            while pending:
                done, fut = pending.popleft()
                yield done, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


# ----------------------------------------------------------------------------- rows
class RowBuilder:
    """Turns (key columns, model output) into ``predictions`` rows of the contract's schema: the label in
    the target's own type and, for classifiers, ``probability`` and ``probabilities`` (docs/contracts.md)."""

    def __init__(
        self, project: Project, champion: Champion, batch_id: str, key_fields: list[pa.Field], chunk: int
    ) -> None:
        from loopline.labels import output_fields

        self.spec = champion.spec
        self.keys = [f.name for f in key_fields]
        self.range = project.config.gate.prediction_range
        lineage = [pa.field(INPUT_BATCH, pa.string()) if f.name == "_batch_id" else f for f in key_fields]
        self.schema = pa.schema(
            [
                *lineage,
                *output_fields(self.spec),
                pa.field("model_name", pa.string()),
                pa.field("model_version", pa.string()),
                pa.field("run_id", pa.string()),
                pa.field("scored_at", pa.timestamp("us", tz="UTC")),
                pa.field("_batch_id", pa.string()),
                pa.field("out_of_range", pa.bool_()),
            ]
        )
        self.scored_at = datetime.now(UTC)
        self._chunk = max(1, chunk)
        zeros = pa.array(np.zeros(self._chunk, dtype=np.int32))
        us = int(self.scored_at.timestamp() * 1_000_000)
        self._const = {
            "model_name": pa.array([champion.name], pa.string()).take(zeros),
            "model_version": pa.array([champion.version], pa.string()).take(zeros),
            "run_id": pa.array([champion.run_id], pa.string()).take(zeros),
            "scored_at": pa.array(np.full(self._chunk, us, dtype=np.int64)).view(pa.timestamp("us", tz="UTC")),
            "_batch_id": pa.array([batch_id], pa.string()).take(zeros),
        }

    def _constant(self, name: str, n: int) -> pa.Array:
        arr = self._const[name]
        if n > len(arr):  # a source batch larger than batch_size (should not happen; stay correct anyway)
            return pa.concat_arrays([arr] * (n // len(arr) + 1)).slice(0, n)
        return arr.slice(0, n)

    def _flags(self, out: dict[str, pa.Array]) -> np.ndarray:
        """Out of range: a non-finite regression prediction or one outside ``gate.prediction_range``; for a
        classifier the same test on ``probability`` (rows without probabilities are not flagged)."""
        col = out["probability"] if self.spec.is_classifier else out["prediction"]
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        present = ~np.isnan(values) if self.spec.is_classifier else np.ones(len(values), dtype=bool)
        bad = ~np.isfinite(values) & present
        if self.range is not None:
            with np.errstate(invalid="ignore"):
                bad |= (values < self.range[0]) | (values > self.range[1])
        return bad

    def build(self, keys: pa.RecordBatch | pa.Table, result: Output) -> pa.RecordBatch:
        from loopline.labels import output_arrays

        n = len(result.predictions)
        out = output_arrays(self.spec, result.predictions, result.proba)
        cols = [keys.column(k) for k in self.keys]
        cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols]
        cols = [c.cast(f.type) if not c.type.equals(f.type) else c for c, f in zip(cols, self.schema, strict=False)]
        names = ["model_name", "model_version", "run_id", "scored_at", "_batch_id"]
        flag = pa.array(self._flags(out), pa.bool_())
        arrays = [*cols, *out.values(), *(self._constant(c, n) for c in names), flag]
        return pa.record_batch(arrays, schema=self.schema)


# ----------------------------------------------------------------------------- input
def default_batch_id(project: Project, store: DeltaStore, version: int | None) -> str:
    """``<input>-v<version>`` for a table; ``query-<hash of the SQL and table versions>`` for a query."""
    b = project.config.batch
    if not b.query:
        return f"{b.input}-v{version}"
    versions = {n: store.version(n) for n in store.names() if n != PREDICTIONS}
    digest = hashlib.sha256(f"{b.query}\n{sorted(versions.items())}".encode()).hexdigest()[:12]
    return f"query-{digest}"


def open_input(
    project: Project, store: DeltaStore, columns: Callable[[pa.Schema, str], list[str]], input_batch: str | None = None
) -> InputStream:
    """Open ``batch.input`` at its current version (pinned) or run ``batch.query``; ``columns`` checks the schema.

    ``input_batch`` keeps only the input rows whose ``_batch_id`` is that value (e.g. one ingested month).
    """
    from loopline.tables import run_readonly_sql

    b = project.config.batch
    if input_batch is not None and b.query:
        raise BatchError(
            "--input-batch filters batch.input by _batch_id; it cannot be combined with batch.query",
            hint="filter in the query instead (e.g. WHERE _batch_id = '...')",
        )
    if b.query:
        where = "batch.query"
        con = store.sql()
        try:
            reader = run_readonly_sql(con, b.query)
        except LooplineError as exc:
            raise BatchError(f"{where} failed: {exc.message}", hint=exc.hint) from None
        wanted = columns(reader.schema, where)
        if wanted != reader.schema.names:
            src = reader

            def select() -> Iterator[pa.RecordBatch]:
                for rb in batches(src):
                    yield rb.select(wanted)

            reader = pa.RecordBatchReader.from_batches(pa.schema([src.schema.field(c) for c in wanted]), select())
        return InputStream(where, None, reader, None)
    where = f"table {b.input!r}"
    if not store.exists(b.input):
        raise BatchError(
            f"{where} does not exist at {store.uri(b.input)}",
            hint="build it first (loopline run ingest / features) or set batch.input",
        )
    dt = store.table(b.input)
    version = int(dt.version())
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    wanted = columns(schema, f"{where} (version {version})")
    if input_batch is not None:
        if "_batch_id" not in schema.names:
            raise BatchError(
                f"{where} (version {version}) has no _batch_id column to select input batch {input_batch!r} from"
            )
        import pyarrow.dataset as ds

        scanner = dt.to_pyarrow_dataset().scanner(
            columns=wanted,
            filter=ds.field("_batch_id") == input_batch,
            batch_size=b.batch_size,
            batch_readahead=2,
            fragment_readahead=1,
        )
        where = f"{where} (version {version}, _batch_id {input_batch!r})"
        return InputStream(where, version, scanner.to_reader(), None)
    try:
        total: int | None = int(dt.count())
    except Exception:
        total = None
    reader = _snapshot_reader(store, dt, schema, wanted, b.batch_size)
    return InputStream(f"{where} (version {version})", version, reader, total)


def _snapshot_reader(
    store: DeltaStore, dt: Any, schema: pa.Schema, wanted: list[str], size: int
) -> pa.RecordBatchReader:
    """Stream the pinned snapshot's Parquet files with bounded memory.

    For a local, unpartitioned table without deletion vectors or column mapping, each data file is
    read page by page (``ParquetFile.iter_batches`` with a small read buffer): peak memory stays
    near one record batch whatever the row-group size (measured: the same ~270 MB above baseline for
    1M and 10M rows x 20 float64 columns, where a dataset scanner decodes whole 600k-row groups and
    grew by 1.5x). Anything else goes through deltalake's dataset with little read-ahead.
    """
    import pyarrow.parquet as pq

    target = pa.schema([schema.field(c) for c in wanted])
    features = set(getattr(dt.protocol(), "reader_features", None) or [])
    plain = (
        "://" not in store.root
        and not dt.metadata().partition_columns
        and not features & {"deletionVectors", "columnMapping"}
    )
    if not plain:
        scanner = dt.to_pyarrow_dataset().scanner(
            columns=wanted, batch_size=size, batch_readahead=2, fragment_readahead=1
        )
        return scanner.to_reader()  # type: ignore[no-any-return]
    files = list(dt.file_uris())

    def read() -> Iterator[pa.RecordBatch]:
        for path in files:
            pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
            have = set(pf.schema_arrow.names)
            cols = [c for c in wanted if c in have]
            for rb in pf.iter_batches(batch_size=size, columns=cols, use_threads=False):
                arrays = [rb.column(f.name) if f.name in have else pa.nulls(rb.num_rows, f.type) for f in target]
                arrays = [a if a.type.equals(f.type) else a.cast(f.type) for a, f in zip(arrays, target, strict=True)]
                yield pa.record_batch(arrays, schema=target)

    return pa.RecordBatchReader.from_batches(target, read())


def build_rows(
    pairs: Iterable[tuple[pa.RecordBatch, Output]],
    builder: RowBuilder,
    counts: dict[str, int],
    progress: ProgressFn | None,
    total: int | None,
) -> Iterator[pa.RecordBatch]:
    """``predictions`` rows for (input batch, predictions) pairs; counts rows and out-of-range rows into
    ``counts`` and reports progress as it goes (shared by the local and Spark engines)."""
    for rb, pred in pairs:
        out = builder.build(rb, pred)
        counts["rows"] += rb.num_rows
        counts["out"] += int(np.count_nonzero(out.column("out_of_range").to_numpy(zero_copy_only=False)))
        if progress is not None:
            progress(counts["rows"], total)
        yield out


def rechunk(source: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of at most ``size`` rows (empty ones dropped)."""
    for rb in source:
        for start in range(0, rb.num_rows, size):
            yield rb.slice(start, size)


def peek(source: Iterator[pa.RecordBatch], where: str) -> Iterator[pa.RecordBatch]:
    """Fail with BatchError before anything is written when ``source`` has no rows."""
    for first in source:
        if first.num_rows:
            break
    else:
        raise BatchError(f"{where} has no rows to score", hint="nothing was written; check the input table / query")

    def chained() -> Iterator[pa.RecordBatch]:
        yield first
        yield from source

    return chained()


def write_stream(
    store: DeltaStore, batch_id: str, schema: pa.Schema, rows: Iterator[pa.RecordBatch], **meta: Any
) -> int:
    """Stream ``rows`` into ``predictions`` as one replace-where commit on ``_batch_id``.

    delta-rs consumes the RecordBatchReader incrementally (measured: 10M rows in ~400 MB peak). An
    exception raised while producing rows aborts the write before its commit; it is re-raised as is.
    """
    failure: list[BaseException] = []

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            yield from rows
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(schema, guarded())
    try:
        return store.replace_batch(PREDICTIONS, reader, batch_id, **meta)
    except TableError:
        if failure:
            err = failure[0]
            if isinstance(err, LooplineError):
                raise err from None
            if isinstance(err, KeyboardInterrupt):
                raise err from None
            raise BatchError(
                f"batch {batch_id!r} failed while scoring ({type(err).__name__}: {err}); nothing was written"
            ) from err
        raise


# ----------------------------------------------------------------------------- the job
def score(
    project: Project,
    batch_id: str | None = None,
    progress: ProgressFn | None = None,
    *,
    engine: str | None = None,
    input_batch: str | None = None,
    fast: bool = True,
) -> BatchResult:
    """Score the input with the champion and write ``predictions`` in one Delta commit.

    ``engine`` overrides ``batch.engine`` (``local`` or ``spark``). ``input_batch`` scores only the
    input rows with that ``_batch_id`` (default batch id then ``<input>-<input_batch>``).
    ``fast=False`` forces the pyfunc path even where the raw scikit-learn model could be used.
    """
    engine = engine or project.config.batch.engine
    if engine == "spark":
        from loopline.batch_spark import score_spark

        return score_spark(project, batch_id=batch_id, progress=progress, input_batch=input_batch)
    if engine != "local":
        raise BatchError(f"unknown batch engine {engine!r}", hint="use local or spark")
    started = time.perf_counter()
    cfg = project.config
    store = DeltaStore(project.storage_root, project.storage_options)
    champion = load_champion(project)
    loaded = time.perf_counter() - started
    state: dict[str, ModelInputs] = {}

    def columns(schema: pa.Schema, where: str) -> list[str]:
        state["inputs"] = model_inputs(project, champion.runtime, schema.names)
        wanted = check_schema(schema, state["inputs"], cfg.model.keys, where)
        return list(dict.fromkeys([*carried(project, schema), *wanted]))

    stream = open_input(project, store, columns, input_batch)
    inputs = state["inputs"]
    default = f"{cfg.batch.input}-{input_batch}" if input_batch is not None else None
    bid = batch_id or default or default_batch_id(project, store, stream.version)
    if not bid.strip():
        raise BatchError("--batch-id must not be empty")
    key_fields = [stream.reader.schema.field(k) for k in carried(project, stream.reader.schema)]
    builder = RowBuilder(project, champion, bid, key_fields, cfg.batch.batch_size)
    predict = Predictor(champion, inputs, stream.name, fast=fast)
    source = peek(rechunk(batches(stream.reader), cfg.batch.batch_size), stream.name)
    counts = {"rows": 0, "out": 0}
    rows = build_rows(predict_stream(predict, source), builder, counts, progress, stream.total)
    with warnings.catch_warnings():  # a model fitted on a DataFrame, given the same columns as numpy
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        version = write_stream(
            store,
            bid,
            builder.schema,
            rows,
            model=champion.name,
            model_version=champion.version,
            input=stream.name,
            input_version=stream.version,
            engine="local",
        )
    return BatchResult(
        batch_id=bid,
        rows=counts["rows"],
        out_of_range=counts["out"],
        model_name=champion.name,
        model_version=champion.version,
        run_id=champion.run_id,
        input=stream.name,
        input_version=stream.version,
        table_version=version,
        engine="local",
        seconds=time.perf_counter() - started,
        load_seconds=loaded,
    )


def batch_job(
    project: Project,
    batch_id: str | None = None,
    engine: str | None = None,
    input_batch: str | None = None,
    progress: ProgressFn | None = None,
) -> BatchResult:
    """`loopline run batch` / the scheduled `batch` job."""
    return score(project, batch_id=batch_id, progress=progress, engine=engine, input_batch=input_batch)


__all__ = ["BatchResult", "ProgressFn", "batch_job", "score"]
