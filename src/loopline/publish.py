"""Publish a table's current snapshot to PostgreSQL, so downstream systems read it over plain SQL.

``publish(project, "predictions", to="postgresql://...")`` upserts every row of the current Delta
version into a PostgreSQL table keyed by ``model.keys`` + ``_batch_id``, in ONE transaction:

1. ``CREATE TABLE IF NOT EXISTS`` with column types mapped from Arrow (new columns are added);
2. ``COPY`` the snapshot, streamed as CSV record batch by record batch, into a temporary table;
3. remove target rows of the published batch ids that are no longer in the snapshot (a rerun batch
   that lost keys), then ``INSERT ... ON CONFLICT (pk) DO UPDATE`` only rows that changed.

Publishing twice leaves the same rows (the second run inserts and updates nothing).
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from loopline.compat import require
from loopline.errors import LooplineError
from loopline.tables import DeltaStore, batches

if TYPE_CHECKING:
    from loopline.config import Project

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COPY_BATCH_ROWS = 65_536


class PublishError(LooplineError):
    """A table could not be published to the SQL warehouse."""


@dataclass(frozen=True)
class PublishResult:
    table: str
    table_version: int
    url: str  # password redacted
    target: str
    rows: int
    inserted: int
    updated: int
    deleted: int
    seconds: float


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def pg_type(field: pa.Field) -> str:
    """The PostgreSQL column type for an Arrow field (PublishError for types with no plain mapping)."""
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    simple = {
        pa.int8(): "smallint",
        pa.int16(): "smallint",
        pa.uint8(): "smallint",
        pa.int32(): "integer",
        pa.uint16(): "integer",
        pa.int64(): "bigint",
        pa.uint32(): "bigint",
        pa.uint64(): "numeric(20,0)",
        pa.float16(): "real",
        pa.float32(): "real",
        pa.float64(): "double precision",
        pa.bool_(): "boolean",
        pa.date32(): "date",
        pa.date64(): "date",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_map(t):  # a classifier's probabilities: {"label": p, ...}
        return "jsonb"
    raise PublishError(
        f"column {field.name!r} has Arrow type {t}, which has no PostgreSQL mapping for publishing",
        hint="publish tables of numbers, strings, booleans, dates and timestamps",
    )


def _target(name: str) -> tuple[str | None, str]:
    parts = name.split(".")
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise PublishError(
            f"target table {name!r} is not a valid name", hint="use letters, digits and _, optionally as schema.table"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _connect(url: str) -> Any:
    psycopg = require("psycopg", extra="postgres")

    safe = redact(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise PublishError(
            f"--to must be a postgresql:// URL, got {safe!r}", hint="e.g. postgresql://user:password@host:5432/database"
        )
    try:
        return psycopg.connect(url, connect_timeout=5)
    except (psycopg.Error, ValueError) as exc:
        password = urlsplit(url).password
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if password:
            detail = detail.replace(password, "***")
        raise PublishError(
            f"cannot connect to PostgreSQL at {safe}: {detail}",
            hint="check host, port, database name and credentials, and that the server accepts connections",
        ) from None


def _csv(rb: pa.RecordBatch) -> bytes:
    import pyarrow.csv as pacsv

    for i, field in enumerate(rb.schema):
        if pa.types.is_map(field.type):  # COPY takes JSON text for a jsonb column
            text = [None if v is None else json.dumps({str(k): x for k, x in v}) for v in rb.column(i).to_pylist()]
            rb = rb.set_column(i, field.name, pa.array(text, pa.string()))
    buf = io.BytesIO()
    pacsv.write_csv(rb, buf, pacsv.WriteOptions(include_header=False))
    return buf.getvalue()


def publish(
    project: Project, table: str = "predictions", to: str = "", target_table: str | None = None
) -> PublishResult:
    """Upsert the current snapshot of ``table`` into PostgreSQL at ``to`` (one transaction, idempotent)."""
    psycopg = require("psycopg", extra="postgres")
    from psycopg import sql

    started = time.perf_counter()
    if not to:
        raise PublishError("no target given", hint="pass --to postgresql://user:password@host:port/db")
    schema_name, name = _target(target_table or table)
    store = DeltaStore(project.storage_root, project.storage_options)
    if not store.exists(table):
        raise PublishError(
            f"table {table!r} does not exist at {store.uri(table)}", hint="write it first, e.g. loopline run batch"
        )
    version = store.version(table)
    arrow_schema = store.schema(table)
    keys = list(project.config.model.keys)
    if not keys:
        raise PublishError(
            f"model.keys is empty in {project.config_path.name}: publishing {table!r} upserts by key",
            hint="list the columns identifying a row under model.keys",
        )
    pk = [*keys, "_batch_id"] if "_batch_id" in arrow_schema.names else keys
    for k in pk:
        if k not in arrow_schema.names:
            raise PublishError(f"table {table!r} has no key column {k!r}", hint=f"its columns: {arrow_schema.names}")
    cols = arrow_schema.names
    types = {f.name: pg_type(f) for f in arrow_schema}

    tgt = sql.Identifier(schema_name, name) if schema_name else sql.Identifier(name)
    label = f"{schema_name}.{name}" if schema_name else name
    ident = {c: sql.Identifier(c) for c in cols}
    col_list = sql.SQL(", ").join(ident[c] for c in cols)
    defs = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(ident[c], sql.SQL(types[c]), sql.SQL(" NOT NULL" if c in pk else "")) for c in cols
    )
    pk_list = sql.SQL(", ").join(ident[c] for c in pk)
    stage = sql.Identifier("_loopline_stage")
    match = sql.SQL(" AND ").join(sql.SQL("s.{c} = t.{c}").format(c=ident[c]) for c in pk)
    rest = [c for c in cols if c not in pk]

    rows = inserted = updated = deleted = 0
    conn = _connect(to)
    try:
        with conn.transaction(), conn.cursor() as cur:
            if schema_name:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema_name)))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(tgt, defs, pk_list))
            for c in cols:  # columns the snapshot gained since the target was created
                cur.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(tgt, ident[c], sql.SQL(types[c]))
                )
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                    stage, sql.SQL(", ").join(sql.SQL("{} {}").format(ident[c], sql.SQL(types[c])) for c in cols)
                )
            )
            reader = store.scan(table, version=version, batch_size=COPY_BATCH_ROWS)
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage, col_list)) as copy:
                for rb in batches(reader):
                    if rb.num_rows:
                        copy.write(_csv(rb))
                        rows += rb.num_rows
            cur.execute(
                sql.SQL("SELECT {} FROM {} GROUP BY {} HAVING count(*) > 1 LIMIT 1").format(pk_list, stage, pk_list)
            )
            dup = cur.fetchone()
            if dup is not None:
                raise PublishError(
                    f"table {table!r} has more than one row for key {dict(zip(pk, dup, strict=True))}",
                    hint="model.keys must identify a row within a batch",
                )
            if "_batch_id" in pk:
                cur.execute(
                    sql.SQL(
                        "DELETE FROM {tgt} AS t WHERE t._batch_id IN (SELECT DISTINCT _batch_id FROM {stage}) "
                        "AND NOT EXISTS (SELECT 1 FROM {stage} AS s WHERE {match})"
                    ).format(tgt=tgt, stage=stage, match=match)
                )
                deleted = cur.rowcount
            if rest:
                changed = sql.SQL(" WHERE ({}) IS DISTINCT FROM ({})").format(
                    sql.SQL(", ").join(sql.SQL("t.{}").format(ident[c]) for c in rest),
                    sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident[c]) for c in rest),
                )
                action: sql.Composable = sql.SQL("DO UPDATE SET {}{}").format(
                    sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident[c]) for c in rest), changed
                )
            else:
                action = sql.SQL("DO NOTHING")
            cur.execute(
                sql.SQL(
                    "WITH up AS (INSERT INTO {tgt} AS t ({cols}) SELECT {cols} FROM {stage} "
                    "ON CONFLICT ({pk}) {action} "
                    "RETURNING (xmax = 0) AS ins) SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) "
                    "FROM up"
                ).format(tgt=tgt, cols=col_list, stage=stage, pk=pk_list, action=action)
            )
            got = cur.fetchone()
            inserted, updated = (int(got[0]), int(got[1])) if got else (0, 0)
    except LooplineError:
        raise
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PublishError(
            f"publishing {table!r} to {label} at {redact(to)} failed (rolled back, nothing changed): {detail}",
            hint="if the target table exists with other columns or another primary key, publish with --table NEW",
        ) from None
    finally:
        conn.close()
    return PublishResult(
        table=table,
        table_version=version,
        url=redact(to),
        target=label,
        rows=rows,
        inserted=inserted,
        updated=updated,
        deleted=deleted,
        seconds=time.perf_counter() - started,
    )


__all__ = ["PublishError", "PublishResult", "publish", "redact"]
