"""Batch predictions, spark engine: the same job as :mod:`loopline.batch` on Apache Spark.

Spark reads the input (the Parquet files of the pinned Delta snapshot, or the result of
``batch.query``); its executors predict with loopline's own model runtime (:mod:`loopline.runtime`,
the model directory shipped with ``SparkContext.addFile``) through ``mapInArrow``, so labels keep the
target's type and classifiers give their class probabilities exactly as the local engine and the
server do; keys + prediction (+ probabilities) are written as Parquet to a staging folder. Those
files are then streamed, record batch by record batch, through the local engine's row builder into
ONE ``replace_where`` commit of ``predictions`` via deltalake, so both engines produce exactly the
same table contract, and a failure at any point leaves the previous table version untouched.

pyspark is imported lazily; without it the engine says ``pip install "loopline[spark]"``. Executors
need ``PYSPARK_PYTHON`` pointing to an interpreter with loopline installed (set to this one for
``local[...]`` masters when unset). The staging folder lives under the project's state folder, which
suits ``local[*]`` and single-host masters; a multi-host cluster needs that path on shared storage.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from loopline.batch import (
    BatchResult,
    Champion,
    ModelInputs,
    ProgressFn,
    RowBuilder,
    build_rows,
    carried,
    check_schema,
    default_batch_id,
    load_champion,
    model_inputs,
    write_stream,
)
from loopline.errors import BatchError, LooplineError, MissingDependency
from loopline.tables import DeltaStore, run_readonly_sql

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.runtime import Output

_SPARK_TYPES = {
    "double": "double",
    "float": "float",
    "long": "bigint",
    "integer": "int",
    "boolean": "boolean",
    "string": "string",
    "binary": "binary",
}


def spark_session(master: str) -> Any:
    """The active SparkSession, or a new one on ``master`` configured for Arrow and UTC timestamps."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise MissingDependency("pyspark", "spark") from None
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    try:
        return (
            SparkSession.builder.master(master)
            .appName("loopline-batch")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
    except Exception as exc:
        raise BatchError(
            f"cannot start Spark on master {master!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint="check batch.spark_master, JAVA_HOME (Java 17+) and PYSPARK_PYTHON",
        ) from None


def _input_frame(
    project: Project, store: DeltaStore, spark: Any, champion: Champion, input_batch: str | None = None
) -> tuple[Any, ModelInputs, str, int | None, pa.Schema]:
    """The input as a Spark DataFrame (keys + inputs), checked like the local engine, and its arrow schema."""
    b = project.config.batch
    keys = project.config.model.keys
    if b.query and input_batch is not None:
        raise BatchError(
            "--input-batch filters batch.input by _batch_id; it cannot be combined with batch.query",
            hint="filter in the query instead",
        )
    if b.query:
        where = "batch.query"
        try:
            table = run_readonly_sql(store.sql(), b.query).read_all()
        except LooplineError as exc:
            raise BatchError(f"{where} failed: {exc.message}", hint=exc.hint) from None
        inputs = model_inputs(project, champion.runtime, table.schema.names)
        wanted = list(
            dict.fromkeys([*carried(project, table.schema), *check_schema(table.schema, inputs, keys, where)])
        )
        table = table.select(wanted)
        if table.num_rows == 0:
            raise BatchError(f"{where} has no rows to score", hint="nothing was written; check the query")
        return spark.createDataFrame(table), inputs, where, None, table.schema
    if not store.exists(b.input):
        raise BatchError(
            f"table {b.input!r} does not exist at {store.uri(b.input)}",
            hint="build it first (loopline run ingest / features) or set batch.input",
        )
    dt = store.table(b.input)
    version = int(dt.version())
    where = f"table {b.input!r} (version {version})"
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    inputs = model_inputs(project, champion.runtime, schema.names)
    wanted = list(dict.fromkeys([*carried(project, schema), *check_schema(schema, inputs, keys, where)]))
    row_filter = None
    if input_batch is not None:
        if "_batch_id" not in schema.names:
            raise BatchError(f"{where} has no _batch_id column to select input batch {input_batch!r} from")
        row_filter = ds.field("_batch_id") == input_batch
        where = f"{where[:-1]}, _batch_id {input_batch!r})"
    if not dt.file_uris() or store.read(b.input, version=version, columns=wanted[:1], filter=row_filter).num_rows == 0:
        raise BatchError(f"{where} has no rows to score", hint="nothing was written; check the input table")
    schema = pa.schema([schema.field(c) for c in wanted])
    features = set(getattr(dt.protocol(), "reader_features", None) or [])
    if dt.metadata().partition_columns or features & {"deletionVectors", "columnMapping"}:
        # Plain Parquet readers cannot see partition values / deletion vectors: hand Spark the snapshot.
        frame = spark.createDataFrame(store.read(b.input, version=version, columns=wanted, filter=row_filter))
    else:
        frame = spark.read.parquet(*dt.file_uris())
        if input_batch is not None:
            from pyspark.sql import functions as F

            frame = frame.filter(F.col("_batch_id") == input_batch)
        frame = frame.select(*wanted)
    return frame, inputs, where, version, schema


_RUNTIMES: dict[str, Any] = {}  # per executor process: model directory -> loaded runtime


def _executor_scorer(model_file: str, spec_json: str, keys: list[str], columns: list[str]) -> Any:
    """The function ``mapInArrow`` runs on the executors: keys + prediction (+ class probabilities)."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles

        from loopline import runtime
        from loopline.labels import LabelSpec, output_arrays

        path = SparkFiles.get(model_file)
        if path not in _RUNTIMES:
            _RUNTIMES[path] = runtime.load(path, LabelSpec.from_dict(__import__("json").loads(spec_json)))
        rt = _RUNTIMES[path]
        for rb in batches:
            if not rb.num_rows:
                continue
            arrays = {c: rb.column(c).to_numpy(zero_copy_only=False) for c in columns if c in rb.schema.names}
            out = rt.predict(arrays, rb.num_rows)
            cols = [rb.column(k) for k in keys] + [output_arrays(rt.spec, out.predictions, None)["prediction"]]
            names = [*keys, "prediction"]
            if rt.spec.is_classifier:
                k = len(rt.spec.classes)
                proba = out.proba if out.proba is not None else np.full((rb.num_rows, k), np.nan)
                offsets = pa.array(np.arange(0, (rb.num_rows + 1) * k, k, dtype=np.int32))
                cols.append(pa.ListArray.from_arrays(offsets, pa.array(proba.reshape(-1), pa.float64())))
                names.append("proba")
            yield pa.record_batch(cols, names=names)

    return score


def _ship_model(project: Project, spark: Any, champion: Champion, staging: Any) -> str:
    """Copy the champion's model directory next to the staging folder and hand it to every executor."""
    from loopline import tracking
    from loopline.context import context

    local = tracking.download(context(project), champion.uri)
    name = f"loopline-model-{champion.version}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(local, staging.parent / name)
    spark.sparkContext.addFile(str(staging.parent / name), recursive=True)
    return name


def score_spark(
    project: Project, batch_id: str | None = None, progress: ProgressFn | None = None, input_batch: str | None = None
) -> BatchResult:
    """Score with Spark (loopline's model runtime on the executors); write ``predictions`` in one Delta commit."""
    started = time.perf_counter()
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise MissingDependency("pyspark", "spark") from None

    cfg = project.config
    store = DeltaStore(project.storage_root, project.storage_options)
    champion = load_champion(project)
    loaded = time.perf_counter() - started
    spark = spark_session(cfg.batch.spark_master)
    frame, inputs, where, version, schema = _input_frame(project, store, spark, champion, input_batch)
    default = f"{cfg.batch.input}-{input_batch}" if input_batch is not None else None
    bid = batch_id or default or default_batch_id(project, store, version)
    if not bid.strip():
        raise BatchError("--batch-id must not be empty")

    from pyspark.sql import functions as F

    for c in inputs.columns:
        sig = inputs.types.get(c)
        if sig in _SPARK_TYPES and c in frame.columns:
            frame = frame.withColumn(c, F.col(c).cast(_SPARK_TYPES[sig]))
    spec = champion.spec
    keys = carried(project, schema)
    present = [c for c in inputs.columns if c in frame.columns]
    out_schema = frame.select(*keys).schema.simpleString()[len("struct<") : -1]
    label_type = {"float": "double", "int": "bigint", "bool": "boolean", "str": "string"}[spec.kind]
    ddl = ", ".join(x for x in (out_schema, f"prediction {label_type}") if x)
    if spec.is_classifier:
        ddl += ", proba array<double>"

    staging = project.state_dir / "tmp" / f"spark-{bid.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    model_file = ""
    try:
        model_file = _ship_model(project, spark, champion, staging)
        scorer = _executor_scorer(model_file, spec.to_json(), keys, present)
        scored = frame.select(*keys, *[c for c in present if c not in keys]).mapInArrow(scorer, ddl)
        try:
            scored.write.mode("overwrite").parquet(str(staging))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BatchError(f"spark scoring of {where} failed: {first}", hint="nothing was written") from None
        staged = ds.dataset(str(staging), format="parquet")
        total = staged.count_rows()
        builder = RowBuilder(project, champion, bid, [schema.field(k) for k in keys], cfg.batch.batch_size)
        counts = {"rows": 0, "out": 0}
        table_version = write_stream(
            store,
            bid,
            builder.schema,
            build_rows(_staged_outputs(staged, spec, cfg.batch.batch_size), builder, counts, progress, total),
            model=champion.name,
            model_version=champion.version,
            input=where,
            input_version=version,
            engine="spark",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if model_file:
            shutil.rmtree(staging.parent / model_file, ignore_errors=True)
    return BatchResult(
        batch_id=bid,
        rows=counts["rows"],
        out_of_range=counts["out"],
        model_name=champion.name,
        model_version=champion.version,
        run_id=champion.run_id,
        input=where,
        input_version=version,
        table_version=table_version,
        engine="spark",
        seconds=time.perf_counter() - started,
        load_seconds=loaded,
    )


def _staged_outputs(staged: ds.Dataset, spec: LabelSpec, size: int) -> Iterator[tuple[pa.RecordBatch, Output]]:
    """(keys, model output) from the executors' staged Parquet files."""
    from loopline.runtime import Output, typed_labels

    for rb in staged.to_batches(batch_size=size):
        if not rb.num_rows:
            continue
        col = rb.column("prediction")
        pred = col.to_numpy(zero_copy_only=False)
        if spec.is_classifier:
            pred = typed_labels(np.asarray(pred), spec)
        proba = None
        if "proba" in rb.schema.names:
            flat = rb.column("proba").flatten().to_numpy(zero_copy_only=False)
            proba = flat.reshape(rb.num_rows, -1)
            if np.isnan(proba).all():
                proba = None
        yield rb, Output(pred, proba)


__all__ = ["score_spark", "spark_session"]
