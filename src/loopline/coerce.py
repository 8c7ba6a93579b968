"""Contract types at ingest: each contract column lands in ``raw`` with the contract's type.

A value that cannot be coerced (``season=spring`` in an ``int`` column) becomes null in its column,
and the row keeps the original text in ``_type_errors`` (JSON ``{"column": "text"}``), so validation
quarantines that row with ``column:type int`` instead of the Delta write failing on the batch.
``raw`` keeps one type per contract column whatever a source's type sniffing guessed.
The work is one streaming DuckDB query over the source's record batches (``TRY_CAST``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from loopline.config import ContractConfig

ERRORS = "_type_errors"
TEXT_KINDS = ("int", "float", "bool", "str")  # CSV: read these columns as text, coerced here (no sniffing)
TYPE_NAMES = {"int": "int64", "float": "float64", "str": "str", "bool": "bool", "datetime": "datetime", "date": "date"}
_BAD = "__bad__"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cast(kind: str, col: str, t: pa.DataType) -> tuple[str | None, bool]:
    """(SQL giving the coerced value or None when the column already fits, whether it can fail)."""
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if kind == "int":
        if pa.types.is_integer(t):
            return (None if t == pa.int64() else f"TRY_CAST({col} AS BIGINT)"), t == pa.uint64()
        number = f"TRY_CAST({col} AS DOUBLE)" if not pa.types.is_floating(t) else col
        return f"CASE WHEN {number} = trunc({number}) THEN TRY_CAST({number} AS BIGINT) END", True
    if kind == "float":
        if t == pa.float64():
            return None, False
        return f"TRY_CAST({col} AS DOUBLE)", not (pa.types.is_integer(t) or pa.types.is_floating(t))
    if kind == "str":
        return (None, False) if text else (f"CAST({col} AS VARCHAR)", False)
    if kind == "bool":
        return (None, False) if pa.types.is_boolean(t) else (f"TRY_CAST({col} AS BOOLEAN)", True)
    if kind == "datetime":
        if pa.types.is_timestamp(t):
            return None, False
        # text with a UTC offset is converted to UTC (the session's zone), not cut at the offset; the column
        # stays a plain TIMESTAMP as DuckDB's CSV reader types such columns in the batches that parsed
        return f"CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP)", not pa.types.is_date(t)
    if pa.types.is_date(t):  # date
        return None, False
    return f"TRY_CAST({col} AS DATE)", not pa.types.is_timestamp(t)


def coerce_sql(contract: ContractConfig, schema: pa.Schema, table: str) -> tuple[str, list[str]] | None:
    """The coercing SELECT over ``table`` and the columns whose values can fail; None when all fit."""
    exprs: dict[str, str] = {}
    bad: dict[str, str] = {}
    for name, spec in contract.columns.items():
        if spec.type is None or name not in schema.names:
            continue
        expr, can_fail = _cast(spec.type, quote(name), schema.field(name).type)
        if expr is None:
            continue
        exprs[name] = expr
        if can_fail:
            bad[name] = f"({quote(name)} IS NOT NULL AND ({expr}) IS NULL)"
    if not exprs:
        return None
    replace = ", ".join(f"{e} AS {quote(n)}" for n, e in exprs.items())
    parts = [
        f"CASE WHEN {b} THEN {_sql_str(json.dumps(n) + ':')} || to_json(CAST({quote(n)} AS VARCHAR)) END"
        for n, b in bad.items()
    ]
    errors = (
        f"CASE WHEN {' OR '.join(bad.values())} THEN '{{' || concat_ws(',', {', '.join(parts)}) || '}}' END"
        if bad
        else "CAST(NULL AS VARCHAR)"
    )
    flags = "".join(f", {b} AS {quote(_BAD + n)}" for n, b in bad.items())
    return f"SELECT * REPLACE ({replace}), {errors} AS {ERRORS}{flags} FROM {table}", list(bad)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class TypeTally:
    """Per fallible column: values that could not be coerced, values that could, a few examples."""

    bad: dict[str, int] = field(default_factory=dict)
    good: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
        """Count one coerced batch; return it without the helper flag columns."""
        import pyarrow.compute as pc

        for name in columns:
            flag = batch.column(_BAD + name)
            bad = int(pc.sum(flag).as_py() or 0)
            self.bad[name] = self.bad.get(name, 0) + bad
            self.good[name] = self.good.get(name, 0) + len(batch) - batch.column(name).null_count
            seen = self.examples.setdefault(name, [])
            if bad and len(seen) < 5:
                for text in batch.column(ERRORS).filter(flag).to_pylist()[: 5 - len(seen)]:
                    seen.append(json.loads(text)[name])
        keep = [n for n in batch.schema.names if not n.startswith(_BAD)]
        return batch.select(keep)

    def all_bad(self) -> list[str]:
        """Columns none of whose values could be coerced: the column's type changed (schema drift)."""
        return [n for n, bad in self.bad.items() if bad and not self.good.get(n)]


def coerced_batches(
    reader: pa.RecordBatchReader, contract: ContractConfig, tally: TypeTally, batch_rows: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch], Any]:
    """Stream ``reader`` through the coercing query; (output schema, batches, connection to close)."""
    import duckdb

    plan = coerce_sql(contract, reader.schema, "src")
    if plan is None:
        return reader.schema, iter(reader), None
    sql, fallible = plan
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.register("src", reader)
    out = con.sql(sql).to_arrow_reader(batch_rows)
    schema = pa.schema([f for f in out.schema if not f.name.startswith(_BAD)])

    def gen() -> Iterator[pa.RecordBatch]:
        for batch in out:
            yield tally.add(batch, fallible)

    return schema, gen(), con
