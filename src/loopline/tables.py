"""Every table read and write in loopline: Delta Lake via ``deltalake``, SQL via DuckDB.

Each write is exactly one Delta commit, so a crash mid-write leaves the previous version readable
and a rerun replaces rather than duplicates (``replace_where`` / ``replace_batch`` / ``merge``).
Reads stream as Arrow record batches; nothing here loads a whole table unless asked (``read``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pyarrow as pa
import pyarrow.dataset as ds

from loopline.errors import SqlError, TableError

if TYPE_CHECKING:
    import duckdb
    from deltalake import CommitProperties, DeltaTable

TABLE_NAMES = (
    "raw",
    "quarantine",
    "features",
    "predictions",
    "inference_log",
    "feedback",
    "monitoring",
    "registry_events",
    "decisions",
    "runs",
)
DEFAULT_BATCH_ROWS = 131_072
ArrowData: TypeAlias = pa.Table | pa.RecordBatchReader | pa.RecordBatch

# delta-rs holds a whole row group in memory while writing, and a reader decodes one at a time: its default
# of 1M rows made every streamed write and scan hold ~100-300 MB; 128k rows keep both flat.
ROW_GROUP_ROWS = 131_072


@dataclass(frozen=True)
class TableInfo:
    name: str
    uri: str
    version: int
    rows: int
    size_bytes: int
    files: int
    last_write: datetime | None
    last_operation: str | None


@dataclass(frozen=True)
class RetentionResult:
    table: str
    column: str
    cutoff: datetime
    rows_deleted: int
    files_removed: int
    version: int


class TableBackend(Protocol):
    """What stages need from a table store (the Delta store below is the one implementation)."""

    def append(self, name: str, data: ArrowData) -> int: ...

    def replace_where(self, name: str, data: ArrowData, predicate: str) -> int: ...

    def scan(self, name: str, **kwargs: Any) -> pa.RecordBatchReader: ...

    def version(self, name: str) -> int: ...


def commit_properties(meta: dict[str, Any]) -> CommitProperties:
    """Delta commit metadata: each value as JSON (who wrote, which batch, which model...)."""
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={k: json.dumps(v, default=str) for k, v in meta.items()})


def sql_literal(value: Any) -> str:
    """A value as a SQL literal for Delta predicates (strings quoted, quotes doubled)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


class Appender:
    """Appends to one table through a ``DeltaTable`` handle kept between commits: a commit then updates
    the handle's snapshot instead of reading the table's log again (about half the cost of an append by
    URI, which matters for a server committing every second). Commits by other writers in between are
    resolved by delta-rs (appends never conflict). A failed write drops the handle; the next reopens it."""

    def __init__(self, store: DeltaStore, name: str, meta: dict[str, Any]) -> None:
        self.store = store
        self.name = name
        self.meta = meta
        self._dt: DeltaTable | None = None

    def __call__(self, data: ArrowData, **extra: Any) -> None:
        """Append ``data``; ``extra``: more commit metadata for this commit only."""
        from deltalake import write_deltalake

        if self._dt is None:
            if not self.store.exists(self.name):
                self.store.append(self.name, data, **self.meta, **extra)
                return
            self._dt = self.store.table(self.name)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        props = commit_properties({**self.meta, **extra})
        try:
            write_deltalake(self._dt, data, mode="append", schema_mode="merge", commit_properties=props)
        except Exception as exc:
            self._dt = None
            raise TableError(f"appending to table {self.name!r} failed: {exc}") from exc

    def reset(self) -> None:
        """Drop the handle (after another process rewrote the table, e.g. a compaction)."""
        self._dt = None


class DeltaStore:
    """Delta tables under one root (a local folder or an object-store URI)."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = storage_options or None
        if "://" not in self.root:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ locations
    def uri(self, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TableError(f"table name {name!r} is not valid", hint="use letters, digits and _")
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.uri(name), storage_options=self.storage_options))

    def names(self) -> list[str]:
        """Tables present under the root (local roots are listed; object stores report the known names)."""
        if "://" not in self.root:
            found = [p.name for p in sorted(Path(self.root).iterdir()) if (p / "_delta_log").is_dir()]
            return found
        return [n for n in TABLE_NAMES if self.exists(n)]

    def table(self, name: str, version: int | None = None, timestamp: datetime | None = None) -> DeltaTable:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            dt = DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
            if timestamp is not None:
                dt.load_as_version(timestamp)
        except TableNotFoundError:
            raise TableError(
                f"table {name!r} does not exist at {self.uri(name)}",
                hint="run the stage that writes it first (see `loopline tables`)",
            ) from None
        except Exception as exc:  # deltalake raises plain errors for a bad version/timestamp
            at = f" at version {version}" if version is not None else f" at {timestamp}" if timestamp else ""
            raise TableError(f"cannot open table {name!r}{at}: {exc}") from None
        return dt

    # ------------------------------------------------------------------ writes (one commit each)
    def _write(self, name: str, data: ArrowData, mode: str, predicate: str | None = None, **meta: Any) -> int:
        from deltalake import WriterProperties, write_deltalake

        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        props = commit_properties(meta)
        try:
            write_deltalake(  # type: ignore[call-overload]
                self.uri(name),
                data,
                mode=mode,  # type: ignore[arg-type]
                predicate=predicate,
                schema_mode="merge" if mode == "append" or predicate else "overwrite",
                storage_options=self.storage_options,
                commit_properties=props,
                writer_properties=WriterProperties(max_row_group_size=ROW_GROUP_ROWS),
            )
        except Exception as exc:
            raise TableError(f"writing table {name!r} ({mode}) failed: {exc}") from exc
        return self.version(name)

    def append(self, name: str, data: ArrowData, **meta: Any) -> int:
        """Append rows in one commit; new columns are merged into the schema."""
        return self._write(name, data, "append", **meta)

    def overwrite(self, name: str, data: ArrowData, **meta: Any) -> int:
        """Replace the whole table in one commit."""
        return self._write(name, data, "overwrite", **meta)

    def replace_where(self, name: str, data: ArrowData, predicate: str, **meta: Any) -> int:
        """Atomically replace the rows matching ``predicate`` with ``data`` (creates the table if new)."""
        if not self.exists(name):
            return self.append(name, data, **meta)
        return self._write(name, data, "overwrite", predicate=predicate, **meta)

    def replace_batch(self, name: str, data: ArrowData, batch_id: str, column: str = "_batch_id", **meta: Any) -> int:
        """Idempotent batch write: the rows of ``batch_id`` are replaced, never duplicated."""
        return self.replace_where(name, data, f"{column} = {sql_literal(batch_id)}", batch_id=batch_id, **meta)

    def merge(self, name: str, data: ArrowData, keys: Sequence[str], **meta: Any) -> int:
        """Upsert by ``keys``: matching rows updated, new rows inserted; one commit."""

        if not keys:
            raise TableError(f"merge into {name!r} needs at least one key column")
        if not self.exists(name):
            return self.append(name, data, **meta)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        props = commit_properties(meta)
        try:
            (
                self.table(name)
                .merge(data, predicate=on, source_alias="s", target_alias="t", commit_properties=props)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        except Exception as exc:
            raise TableError(f"merge into {name!r} on {list(keys)} failed: {exc}") from exc
        return self.version(name)

    def update_matching(self, name: str, data: ArrowData, keys: Sequence[str], columns: Sequence[str]) -> int:
        """Set ``columns`` from ``data`` on the rows matching by ``keys`` (no inserts); one commit.

        Returns the number of rows updated.
        """
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        try:
            metrics = (
                self.table(name)
                .merge(data, predicate=on, source_alias="s", target_alias="t")
                .when_matched_update({c: f"s.{c}" for c in columns})
                .execute()
            )
        except TableError:
            raise
        except Exception as exc:
            raise TableError(f"update of {list(columns)} in {name!r} by {list(keys)} failed: {exc}") from exc
        return int(metrics.get("num_target_rows_updated", 0) or 0)

    def delete(self, name: str, predicate: str) -> int:
        """Delete rows matching ``predicate``; returns the number deleted."""
        try:
            metrics = self.table(name).delete(predicate)
        except TableError:
            raise
        except Exception as exc:
            raise TableError(f"delete from {name!r} where {predicate} failed: {exc}") from exc
        return int(metrics.get("num_deleted_rows", 0) or 0)

    # ------------------------------------------------------------------ reads (streaming)
    def dataset(self, name: str, version: int | None = None, timestamp: datetime | None = None) -> ds.Dataset:
        return self.table(name, version, timestamp).to_pyarrow_dataset()

    def scan(
        self,
        name: str,
        *,
        version: int | None = None,
        timestamp: datetime | None = None,
        columns: list[str] | None = None,
        filter: ds.Expression | None = None,
        batch_size: int = DEFAULT_BATCH_ROWS,
        threads: bool = True,
    ) -> pa.RecordBatchReader:
        """Stream a table (at a version or timestamp) as Arrow record batches of bounded size (``threads``:
        decode several batches at once; off, a scan holds one batch: what bounded-memory validation wants)."""
        dataset = self.dataset(name, version, timestamp)
        if columns:
            missing = [c for c in columns if c not in dataset.schema.names]
            if missing:
                raise TableError(
                    f"table {name!r} has no column(s) {missing}",
                    hint=f"its columns: {', '.join(dataset.schema.names)}",
                )
        # pyarrow reads ahead 16 batches of each of 4 files by default: a reader that streams to bound memory
        # would hold up to 64 batches; one batch and one file ahead keep the pipeline busy and memory flat
        scanner = dataset.scanner(
            columns=columns,
            filter=filter,
            batch_size=batch_size,
            batch_readahead=1,
            fragment_readahead=1,
            fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
            use_threads=threads,
        )
        return scanner.to_reader()

    def read(self, name: str, **kwargs: Any) -> pa.Table:
        """Read a whole table into memory (for small tables and user hooks that want a DataFrame)."""
        return self.scan(name, **kwargs).read_all()

    def schema(self, name: str) -> pa.Schema:
        return self.dataset(name).schema

    def version(self, name: str) -> int:
        return int(self.table(name).version())

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.table(name).history(limit))

    def info(self, name: str) -> TableInfo:
        dt = self.table(name)
        actions = pa.table(dt.get_add_actions(flatten=True))
        rows = int(pa.compute.sum(actions["num_records"]).as_py() or 0) if actions.num_rows else 0
        size = int(pa.compute.sum(actions["size_bytes"]).as_py() or 0) if actions.num_rows else 0
        last = dt.history(1)
        ts = datetime.fromtimestamp(last[0]["timestamp"] / 1000, tz=UTC) if last else None
        return TableInfo(
            name=name,
            uri=self.uri(name),
            version=int(dt.version()),
            rows=rows,
            size_bytes=size,
            files=actions.num_rows,
            last_write=ts,
            last_operation=last[0].get("operation") if last else None,
        )

    # ------------------------------------------------------------------ retention
    def retain(self, name: str, column: str, keep: timedelta, now: datetime | None = None) -> RetentionResult:
        """Delete rows whose ``column`` is older than ``keep``, then vacuum the files they lived in."""
        now = now or datetime.now(UTC)
        cutoff = now - keep
        schema = self.schema(name)
        if column not in schema.names:
            raise TableError(f"retention of {name!r}: no column {column!r}", hint=f"columns: {schema.names}")
        field = schema.field(column).type
        lit = cutoff if getattr(field, "tz", None) else cutoff.replace(tzinfo=None)
        deleted = self.delete(name, f"{column} < '{lit.isoformat()}'")
        removed = self.vacuum(name)
        return RetentionResult(name, column, cutoff, deleted, removed, self.version(name))

    def appender(self, name: str, **meta: Any) -> Appender:
        """A writer of many small appends to ``name`` that keeps its table handle open between commits."""
        return Appender(self, name, meta)

    def compact(self, name: str, target_size: int | None = None, threads: int | None = None) -> tuple[int, int]:
        """Rewrite small files into fewer large ones (one commit, same rows, no data change), then write a
        checkpoint. Appending to a Delta table costs more with every live file, so tables that take many
        small appends (the prediction log) are compacted now and then. Files of ``target_size`` bytes or
        more are left alone; ``threads`` caps the rewrite's parallelism. Returns (files removed, added)."""
        dt = self.table(name)
        try:
            metrics = dt.optimize.compact(target_size=target_size, max_concurrent_tasks=threads)
            dt.create_checkpoint()
        except Exception as exc:
            raise TableError(f"compacting table {name!r} failed: {exc}") from exc
        return int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))

    def vacuum(self, name: str) -> int:
        """Physically remove files no longer referenced by the current version (time travel to them ends)."""
        files = self.table(name).vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True)
        return len(files)

    # ------------------------------------------------------------------ SQL
    def sql(self, names: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-process DuckDB connection with each table visible by name at its current snapshot."""
        import duckdb

        con = duckdb.connect(":memory:")
        for n in names if names is not None else self.names():
            try:
                con.register(n, self.dataset(n))
            except TableError:
                continue
        return con


SANDBOX = (
    "SET enable_external_access = false",  # no files, URLs, ATTACH, COPY: only the registered tables
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",  # and no statement can turn them back on
)
_REFUSED = "loopline sql reads the project's tables by name; files, extensions and settings are off limits"


def sandbox(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Lock ``con`` to what is registered in it: external access, extension loading and settings off.

    Tables registered as Arrow datasets (``DeltaStore.sql``) stay readable."""
    locked = con.execute("SELECT current_setting('lock_configuration')").fetchone()
    if not (locked and locked[0]):
        for statement in SANDBOX:
            con.execute(statement)
    return con


def _first_keyword(query: str) -> str:
    """The statement's first word, comments skipped (DuckDB's own tokenizer)."""
    import duckdb

    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(query) if kind != duckdb.token_type.comment]
    if not tokens:
        return ""
    pos = tokens[0][0]
    return re.match(r"\w*", query[pos:]).group(0).lower()  # type: ignore[union-attr]


def _check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"SQL does not parse: {exc}") from None
    if len(statements) != 1:
        raise SqlError(f"exactly one SQL statement is allowed, got {len(statements)}")
    stype = statements[0].type
    pivot = stype == duckdb.StatementType.MULTI and _first_keyword(query) == "pivot"  # PIVOT plans as several
    if stype != duckdb.StatementType.SELECT and not pivot:
        raise SqlError(
            f"only read-only queries are allowed; this is a {stype.name} statement",
            hint="loopline sql reads tables; tables are written only by loopline stages",
        )


class _Deadline:
    """Interrupts ``con`` after ``seconds`` (a timer thread calling ``con.interrupt()``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float | None) -> None:
        import threading

        self.seconds = seconds
        self.fired = False
        self._con = con
        self._timer = threading.Timer(seconds, self._fire) if seconds else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._con.interrupt()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def error(self, exc: Exception) -> SqlError:
        import duckdb

        self.cancel()
        if self.fired:
            return SqlError(
                f"the query ran longer than {self.seconds:g} s and was stopped",
                hint="narrow the query (filters, LIMIT) or raise --timeout",
            )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, duckdb.PermissionException):
            return SqlError(f"query refused: {first}", hint=_REFUSED)
        return SqlError(f"query failed: {exc}")


def run_readonly_sql(
    con: duckdb.DuckDBPyConnection, query: str, *, timeout: float | None = None
) -> pa.RecordBatchReader:
    """Run one read-only statement in a sandbox (:func:`sandbox`), stopped after ``timeout`` seconds.

    Only SELECT-like statements (and PIVOT) pass; the connection is locked before the query runs, so
    files, extensions and settings are refused whatever the statement. Errors (also while the returned
    reader is read) are :class:`SqlError`."""
    import duckdb

    _check_read_only(con, query)
    sandbox(con)
    deadline = _Deadline(con, timeout)
    try:
        reader = con.sql(query).to_arrow_reader()
    except duckdb.Error as exc:
        raise deadline.error(exc) from None

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches(reader)
        except (duckdb.Error, pa.ArrowException) as exc:
            raise deadline.error(exc) from None
        finally:
            deadline.cancel()

    return pa.RecordBatchReader.from_batches(reader.schema, guarded())


def batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
