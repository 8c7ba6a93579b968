"""Data sources (``sources:`` in loopline.yaml) opened as streaming Arrow record batch readers.

CSV and Parquet are read by DuckDB, Delta tables by ``deltalake``, and ``kind: sql`` runs a DuckDB
query over files registered as views by name, with ``$name`` parameters bound from ``--param``.
Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from loopline.config import Project, SourceConfig

BATCH_ROWS = 65_536
_PARAM = re.compile(r"(?<![\w$])\$([A-Za-z_][A-Za-z0-9_]*)")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KIND_WORDS = {"csv": "a CSV file", "parquet": "a Parquet file", "delta": "a Delta table folder"}


@dataclass
class OpenedSource:
    """A source opened for one read: its reader plus what identifies the read."""

    name: str
    kind: str
    location: str
    reader: pa.RecordBatchReader
    params: dict[str, Any] = field(default_factory=dict)
    connection: Any = None  # keeps the DuckDB connection alive while the reader streams
    options: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def parse_params(pairs: Sequence[str], source: str) -> dict[str, Any]:
    """``["month=4", "city=dc"]`` -> ``{"month": 4, "city": "dc"}`` (ints and floats are converted)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _IDENT.match(key):
            raise SourceError(
                f"source {source!r}: --param must look like name=value, got {pair!r}",
                hint="e.g. --param month=4",
            )
        out[key] = _coerce(value.strip())
    return out


def _coerce(value: str) -> Any:
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def source_config(project: Project, name: str) -> SourceConfig:
    sources = project.config.sources
    if name not in sources:
        defined = ", ".join(sources) or "(none)"
        raise SourceError(
            f"source {name!r} is not defined under `sources` in {project.config_path.name}",
            hint=f"defined sources: {defined}",
        )
    return sources[name]


def open_source(
    project: Project, name: str, params: dict[str, Any] | None = None, text_columns: Sequence[str] = ()
) -> OpenedSource:
    """Open source ``name`` of ``project`` as a streaming reader; errors name the source and path.

    ``text_columns``: CSV columns read as text (no type sniffing; coerced to the contract later)."""
    cfg = source_config(project, name)
    params = dict(params or {})
    if cfg.kind != "sql" and params:
        raise SourceError(
            f"source {name!r} (kind {cfg.kind}) takes no parameters, got {', '.join(sorted(params))}",
            hint="only `kind: sql` sources bind $name parameters from --param",
        )
    if cfg.kind == "sql":
        return _open_sql(project, name, cfg, params)
    assert cfg.path is not None  # guaranteed by SourceConfig
    path = project.resolve_path(cfg.path)
    if cfg.kind == "delta":
        return _open_delta(project, name, cfg, path)
    _require_files(name, f"sources.{name}.path", path, _KIND_WORDS[cfg.kind])
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        if cfg.kind == "csv":
            rel = _read_csv(con, name, path, cfg.options, text_columns)
        else:
            rel = con.read_parquet(path, **cfg.options)
        reader = rel.to_arrow_reader(BATCH_ROWS)
    except (duckdb.Error, TypeError) as exc:
        con.close()
        raise SourceError(
            f"source {name!r}: cannot read {path} as {_KIND_WORDS[cfg.kind]}: {_first_line(exc)}",
            hint=f"check sources.{name}.path and sources.{name}.options",
        ) from None
    return OpenedSource(name, cfg.kind, path, reader, connection=con, options=dict(cfg.options))


_TYPE_OPTIONS = ("dtype", "types", "column_types", "all_varchar", "columns")
_DELIMITERS = (",", ";", "\t", "|")


def _read_csv(con: Any, name: str, path: str, options: dict[str, Any], text_columns: Sequence[str]) -> Any:
    rel = con.read_csv(path, **options)
    header = rel.columns
    delimited = [d for d in _DELIMITERS if len(header) == 1 and d in header[0]]
    if delimited and not {"delimiter", "sep", "delim"} & set(options):
        # the sniffer found no consistent dialect: some lines have another number of fields
        raise csv_lines_error(name, path, {**options, "delimiter": delimited[0]}) or SourceError(
            f"source {name!r}: cannot tell the columns of {path}", hint=f"set sources.{name}.options.delimiter"
        )
    text = [c for c in header if c in set(text_columns)]
    if text and not set(_TYPE_OPTIONS) & set(options):
        rel = con.read_csv(path, **options, dtype={c: "VARCHAR" for c in text})
    return rel


def csv_lines_error(name: str, path: str, options: dict[str, Any], limit: int = 10) -> SourceError | None:
    """A SourceError naming the malformed lines of a CSV file (None when DuckDB rejects no line)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.read_csv(path, **options, store_rejects=True).aggregate("count(*)").fetchall()
        rows = con.sql("SELECT line, error_message FROM reject_errors ORDER BY line").fetchall()
    except duckdb.Error:
        return None
    finally:
        con.close()
    lines: dict[int, str] = {}
    for line, message in rows:
        lines.setdefault(int(line), str(message).splitlines()[0])
    if not lines:
        return None
    shown = ", ".join(f"line {n} ({m})" for n, m in list(lines.items())[:limit])
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return SourceError(
        f"source {name!r}: {path} has {len(lines)} malformed line(s): {shown}{more}",
        hint="every line needs the header's number of fields; fix or remove those lines",
    )


def _open_delta(project: Project, name: str, cfg: SourceConfig, path: str) -> OpenedSource:
    from deltalake import DeltaTable

    unknown = set(cfg.options) - {"version"}
    if unknown:
        raise SourceError(f"source {name!r}: unknown Delta option(s) {sorted(unknown)}; expected only `version`")
    opts = project.storage_options or None
    if not DeltaTable.is_deltatable(path, storage_options=opts):
        raise SourceError(
            f"source {name!r}: {path} is not a Delta table (expected a folder with a _delta_log)",
            hint=f"check sources.{name}.path",
        )
    try:
        dt = DeltaTable(path, version=cfg.options.get("version"), storage_options=opts)
    except Exception as exc:
        raise SourceError(f"source {name!r}: cannot open Delta table {path}: {_first_line(exc)}") from None
    reader = dt.to_pyarrow_dataset().scanner(batch_size=BATCH_ROWS).to_reader()
    return OpenedSource(name, "delta", path, reader)


def _open_sql(project: Project, name: str, cfg: SourceConfig, params: dict[str, Any]) -> OpenedSource:
    import duckdb

    assert cfg.query is not None  # guaranteed by SourceConfig
    wanted = sorted(set(_PARAM.findall(cfg.query)))
    missing = [p for p in wanted if p not in params]
    if missing:
        raise SourceError(
            f"source {name!r}: the query needs parameter(s) {', '.join(missing)}",
            hint=" ".join(f"--param {p}=..." for p in missing),
        )
    extra = sorted(set(params) - set(wanted))
    if extra:
        uses = ", ".join(wanted) or "none"
        raise SourceError(f"source {name!r}: unknown parameter(s) {', '.join(extra)}; the query uses: {uses}")
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    try:
        for view, file in cfg.files.items():
            _register_view(project, con, name, view, file)
        rel = con.sql(cfg.query, params=params or None)
        if rel is None:
            raise SourceError(f"source {name!r}: the query must be a SELECT returning rows")
        reader = rel.to_arrow_reader(BATCH_ROWS)
    except duckdb.Error as exc:
        con.close()
        raise SourceError(
            f"source {name!r}: the query failed: {_first_line(exc)}",
            hint=f"check sources.{name}.query (DuckDB SQL; views: {', '.join(cfg.files) or 'none'})",
        ) from None
    except SourceError:
        con.close()
        raise
    return OpenedSource(name, "sql", "query", reader, params=params, connection=con)


def _register_view(project: Project, con: Any, source: str, view: str, file: str) -> None:
    key = f"sources.{source}.files.{view}"
    if not _IDENT.match(view):
        raise SourceError(f"{key}: view name {view!r} must be a SQL identifier (letters, digits, _)")
    path = project.resolve_path(file)
    lower = path.lower()
    if "://" not in path and Path(path, "_delta_log").is_dir():
        from deltalake import DeltaTable

        con.register(view, DeltaTable(path, storage_options=project.storage_options or None).to_pyarrow_dataset())
        return
    if lower.endswith(".parquet"):
        _require_files(source, key, path, "a Parquet file")
        con.read_parquet(path).create_view(view)
    elif re.search(r"\.(csv|tsv|txt)(\.gz|\.zst)?$", lower):
        _require_files(source, key, path, "a CSV file")
        con.read_csv(path).create_view(view)
    else:
        raise SourceError(
            f"{key}: cannot tell the format of {file!r}",
            hint="expected a .csv/.tsv/.parquet file (or glob) or a Delta table folder",
        )


def _require_files(source: str, key: str, path: str, what: str) -> None:
    if "://" in path:
        return
    if not glob.glob(path):
        raise SourceError(
            f"source {source!r}: {key} = {path} does not exist (expected {what})",
            hint="paths are relative to the project folder; `pkg://package/path` points inside a package",
        )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
