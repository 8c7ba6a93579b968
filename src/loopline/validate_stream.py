"""Validating one ``raw`` batch in chunks of ``validate.CHUNK_ROWS`` rows: memory stays bounded.

What needs the whole batch is asked of DuckDB first (row count, non-null counts, uncoercible values
per column, the values a ``unique`` column holds more than once); then every chunk is checked with
pandera (:func:`loopline.validate.check_frame`), its failing rows streamed to a staging file for
``quarantine`` (one commit at the end) and its valid rows to a staging file for ``features``.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.coerce import ERRORS, TYPE_NAMES, quote
from loopline.errors import TableError

if TYPE_CHECKING:
    import pandas as pd

    from loopline.config import ContractConfig
    from loopline.tables import DeltaStore
    from loopline.validate import CheckFailure, DriftItem, ValidationReport

_TS = pa.timestamp("us", tz="UTC")
_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


@dataclass
class BatchStats:
    rows: int
    non_null: dict[str, int]
    type_errors: dict[str, int]
    duplicates: dict[str, pa.Array]


class _Scratch:
    """A staging folder removed when the last object holding it is gone (or at exit)."""

    def __init__(self, parent: Path) -> None:
        import shutil
        import weakref

        self.path = Path(tempfile.mkdtemp(dir=parent))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def cleanup(self) -> None:
        self._finalizer()


@dataclass
class StagedRows:
    """Rows of a batch staged in a Parquet file (deleted with this object)."""

    path: Path | None
    contract: ContractConfig
    _tmp: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def reader(self) -> pa.RecordBatchReader | None:
        import pyarrow.parquet as pq

        if self.path is None:
            return None
        f = pq.ParquetFile(self.path)
        return pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(batch_size=65_536))

    def frame(self) -> pd.DataFrame:
        """All rows as one DataFrame (contract columns with nulls as nullable Int64 / boolean)."""
        import pandas as pd
        import pyarrow.parquet as pq

        if self.path is None:
            return pd.DataFrame()
        df = pq.read_table(self.path).to_pandas()
        for name, spec in self.contract.columns.items():
            if name in df.columns and spec.type in ("int", "bool") and df[name].dtype.kind not in "iub":
                df[name] = df[name].astype("Int64" if spec.type == "int" else "boolean")
        return df


def batch_stats(store: DeltaStore, batch_id: str, columns: list[str], contract: ContractConfig) -> BatchStats:
    """Whole-batch figures, streamed: counts batch by batch with Arrow, duplicates of each ``unique`` column by
    DuckDB over that one column's stream (spilling to disk past its memory limit)."""
    import pyarrow.dataset as ds

    from loopline import validate as v

    typed = [c for c in contract.columns if c in columns and ERRORS in store.schema("raw").names]
    where = ds.field("_batch_id") == batch_id
    rows, non_null, type_errors = 0, dict.fromkeys(columns, 0), dict.fromkeys(typed, 0)
    scan = store.scan(
        "raw", columns=columns + ([ERRORS] if typed else []), filter=where, batch_size=v.CHUNK_ROWS, threads=False
    )
    for batch in scan:
        rows += batch.num_rows
        for c in columns:
            non_null[c] += batch.num_rows - batch.column(c).null_count
        if typed:
            for text in batch.column(ERRORS).drop_null().to_pylist():  # the rare rows with a type error
                errors = json.loads(text)
                for c in typed:
                    type_errors[c] += errors.get(c) is not None
    dups = {}
    for c, spec in contract.columns.items():
        if spec.unique and c in columns:
            dups.update(_duplicates(store, where, c))
    return BatchStats(rows, non_null, type_errors, dups)


def _duplicates(store: DeltaStore, where: Any, column: str) -> dict[str, pa.Array]:
    """The values of ``column`` found more than once in the batch (one column streamed into DuckDB)."""
    import duckdb

    con = duckdb.connect(":memory:", config={"memory_limit": "256MB"})  # past it, the GROUP BY spills
    try:
        con.register("col", store.scan("raw", columns=[column], filter=where, threads=False))
        q = quote(column)
        sql = f"SELECT {q} FROM col WHERE {q} IS NOT NULL GROUP BY {q} HAVING count(*) > 1"
        values = con.sql(sql).to_arrow_table().column(0).combine_chunks()
    finally:
        con.close()
    return {column: values} if len(values) else {}


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Merged:
    """Check failures and drift items of every chunk, merged by (check, column) / (kind, column)."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str | None], CheckFailure] = {}
        self.drift: dict[tuple[str, str], DriftItem] = {}

    def check(self, check: str, column: str | None, count: int, examples: list[Any]) -> None:
        from loopline.validate import MAX_EXAMPLES, CheckFailure, _examples

        got = self.checks.setdefault((check, column), CheckFailure(check, column, 0, []))
        got.failing_count += count
        got.examples = _examples(got.examples + examples)[:MAX_EXAMPLES]

    def add(self, report: ValidationReport) -> None:
        for c in report.checks:
            self.check(c.check, c.column, c.failing_count, c.examples)
        for d in report.drift:
            self.drift.setdefault((d.kind, d.column), d)


def _chunk_contract(contract: ContractConfig) -> ContractConfig:
    """The per-row part of the contract: row count and uniqueness are checked on the whole batch."""
    from loopline.config import RowCount

    columns = {n: c.model_copy(update={"unique": False}) for n, c in contract.columns.items()}
    return contract.model_copy(update={"row_count": RowCount(), "columns": columns})


def _extra_failures(
    table: pa.Table, contract: ContractConfig, stats: BatchStats, merged: _Merged, by_row: dict[int, list[str]]
) -> None:
    """Uncoercible values (``_type_errors``) and values a unique column holds more than once."""
    import pyarrow.compute as pc

    if ERRORS in table.column_names:
        col = table.column(ERRORS)
        for i in pc.indices_nonzero(pc.is_valid(col)).to_pylist():
            for name, text in json.loads(col[i].as_py()).items():
                kind = contract.columns[name].type if name in contract.columns else None
                label = f"type {kind}"
                by_row[i].append(f"{name}:{label}")
                merged.check(label, name, 1, [text])
    for name, values in stats.duplicates.items():
        column = table.column(name)
        hits = pc.indices_nonzero(pc.is_in(column, value_set=values.cast(column.type))).to_pylist()
        for i in hits:
            by_row[i].append(f"{name}:unique")
        if hits:
            merged.check("unique", name, len(hits), column.take(pa.array(hits)).to_pylist())


def _order(entries: list[str], columns: list[str]) -> str:
    """``column:check`` entries in column order (row-level checks last), each once."""
    pos = {c: i for i, c in enumerate(columns)}
    unique = list(dict.fromkeys(entries))
    return ";".join(sorted(unique, key=lambda e: pos.get(e.split(":", 1)[0], len(pos))))


def _cast_valid(table: pa.Table, contract: ContractConfig) -> pa.Table:
    for name, spec in contract.columns.items():
        target = _ARROW.get(spec.type or "")
        if target is not None and name in table.column_names and table.schema.field(name).type != target:
            try:
                table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    return table


def validate_chunks(
    contract: ContractConfig, store: DeltaStore, batch_id: str, root: Path, staging: Path
) -> tuple[ValidationReport, StagedRows, StagedRows]:
    """Check the batch chunk by chunk; return the report, the failing rows and the valid rows (staged)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from loopline import validate as v

    if not store.exists("raw"):
        raise TableError("table 'raw' does not exist yet", hint="ingest a batch first: loopline ingest SOURCE")
    schema = store.schema("raw")
    names = [n for n in schema.names if n not in v.SYSTEM_COLUMNS]
    stats = batch_stats(store, batch_id, names, contract)
    if stats.rows == 0:
        v.missing_batch(store, batch_id)
    user = [n for n in names if n in contract.columns or stats.non_null[n] > 0]
    report = v.ValidationReport(
        batch_id, stats.rows, 0, 0.0, contract.max_failure_rate, True, validated_at=datetime.now(UTC).isoformat()
    )
    merged = _Merged()
    _whole_batch_checks(contract, stats, merged)
    staging.mkdir(parents=True, exist_ok=True)
    tmp = _Scratch(staging)
    failing_path, valid_path = tmp.path / "failing.parquet", tmp.path / "valid.parquet"
    writers: dict[str, pq.ParquetWriter] = {}
    failing = 0
    chunk_contract = _chunk_contract(contract)
    columns = user + ([ERRORS] if ERRORS in schema.names else [])
    scan = store.scan(
        "raw", columns=columns, filter=ds.field("_batch_id") == batch_id, batch_size=v.CHUNK_ROWS, threads=False
    )
    try:
        for batch in scan:
            table = pa.Table.from_batches([batch])
            sub, _, rows = v.check_frame(table.select(user).to_pandas(), chunk_contract, batch_id, root)
            merged.add(sub)
            by_row: dict[int, list[str]] = defaultdict(list, {k: list(e) for k, e in rows.items()})
            _extra_failures(table, contract, stats, merged, by_row)
            failing += len(by_row)
            bad = sorted(by_row)
            if bad:
                out = _quarantine_rows(
                    table.take(pa.array(bad, pa.int64())), batch_id, [_order(by_row[r], user) for r in bad]
                )
                _write(writers, "failing", failing_path, out)
            good = [i for i in range(table.num_rows) if i not in by_row]
            _write(
                writers, "valid", valid_path, _cast_valid(table.select(user).take(pa.array(good, pa.int64())), contract)
            )
    finally:
        for w in writers.values():
            w.close()
    _type_drift(contract, stats, merged)
    report.checks, report.drift = list(merged.checks.values()), list(merged.drift.values())
    v.conclude(report, failing)
    bad_rows = StagedRows(failing_path if "failing" in writers else None, contract, tmp)
    return report, bad_rows, StagedRows(valid_path if "valid" in writers else None, contract, tmp)


def _write(writers: dict[str, Any], key: str, path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    if key not in writers:
        writers[key] = pq.ParquetWriter(path, table.schema)
    writers[key].write_table(table.cast(writers[key].schema))


def _quarantine_rows(rows: pa.Table, batch_id: str, reasons: list[str]) -> pa.Table:
    n = rows.num_rows
    rows = rows.append_column("_batch_id", pa.repeat(pa.scalar(batch_id), n))
    rows = rows.append_column("_failed_checks", pa.array(reasons, pa.string()))
    return rows.append_column("_quarantined_at", pa.repeat(pa.scalar(datetime.now(UTC), _TS), n))


def _whole_batch_checks(contract: ContractConfig, stats: BatchStats, merged: _Merged) -> None:
    rc = contract.row_count
    if rc.min is not None or rc.max is not None:
        lo, hi = rc.min or 0, rc.max if rc.max is not None else float("inf")
        if not lo <= stats.rows <= hi:
            merged.check(f"row_count [{lo}, {hi}]", None, stats.rows, [])


def _type_drift(contract: ContractConfig, stats: BatchStats, merged: _Merged) -> None:
    """A column none of whose values could be coerced changed type: schema drift, not bad rows."""
    from loopline.validate import DriftItem

    for name, bad in stats.type_errors.items():
        if bad and not stats.non_null.get(name):
            kind = contract.columns[name].type or ""
            label = f"type {kind}"
            examples = merged.checks.pop((label, name)).examples if (label, name) in merged.checks else []
            detail = f"cannot be coerced to {TYPE_NAMES.get(kind, kind)}"
            merged.drift.setdefault(("type", name), DriftItem("type", name, detail, examples))
