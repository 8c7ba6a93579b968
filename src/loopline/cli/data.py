"""Data-layer commands: check, sql, tables, retention."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, err_console, load, run_app
from loopline.errors import LooplineError


@app.command()
def check(project: ProjectOpt = None) -> None:
    """Validate a project: config in every environment, hooks import, sources exist. Lists all problems."""
    from loopline.check import check_project

    path, problems = check_project(project)
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s) in {path}[/]")
        for p in problems:
            err_console.print("  [red]•[/] ", end="")
            err_console.print(p, markup=False, highlight=False)
        raise typer.Exit(2)
    console.print(f"[green]✓[/] {path} is valid")
    _registry_warnings(path)


def _registry_warnings(path: Path) -> None:
    """Warn (exit 0) when an environment's registry points at model files outside the project folder."""
    from loopline.config import load_config, load_project
    from loopline.tracking import outside_paths

    cfg, _ = load_config(path)
    for env in cfg.environments:
        try:
            paths = outside_paths(load_project(path, env))
        except LooplineError:
            continue
        if paths:
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            err_console.print(
                f"[yellow]warning[/]: environment {env}: the registry points outside the project: {shown} "
                "(a copied or moved project: the next command rewrites the default layout to this folder)",
                markup=True,
                highlight=False,
            )


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only DuckDB statement; every table is visible by name.")],
    project: ProjectOpt = None,
    env: EnvOpt = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
    timeout: Annotated[float, typer.Option(help="Stop the statement after this many seconds (0: no limit).")] = 60,
) -> None:
    """Run read-only SQL over the environment's tables (each at its current snapshot)."""
    from loopline.tables import DeltaStore, run_readonly_sql

    if format not in ("table", "csv", "json", "parquet"):
        raise LooplineError(f"--format must be one of table, csv, json, parquet, got {format!r}")
    if format == "parquet" and output is None:
        raise LooplineError("--format parquet needs --output FILE", hint="parquet is binary; write it to a file")
    p = load(project, env)
    store = DeltaStore(p.storage_root, p.storage_options)
    if timeout < 0:
        raise LooplineError(f"--timeout must be >= 0 seconds, got {timeout:g}")
    reader = run_readonly_sql(store.sql(), query, timeout=timeout or None)
    _emit(reader, format, output, limit)


def _plain(value: Any, typ: Any) -> Any:
    """A nested Arrow value as JSON-ready Python (maps as objects)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(typ):
        return {str(k): _plain(v, typ.item_type) for k, v in value}
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return [_plain(v, typ.value_type) for v in value]
    if pa.types.is_struct(typ):
        return {f.name: _plain(value.get(f.name), f.type) for f in typ}
    return value


def _nested(typ: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_nested(typ))


def _json_text(batch: Any) -> Any:
    """``batch`` with list, map and struct columns as JSON text (CSV has no nested values)."""
    import json

    import pyarrow as pa

    cols, fields = [], []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if _nested(f.type):
            text = [
                None if v is None else json.dumps(_plain(v, f.type), default=str, separators=(",", ":"))
                for v in col.to_pylist()
            ]
            cols.append(pa.array(text, pa.string()))
            fields.append(pa.field(f.name, pa.string()))
        else:
            cols.append(col)
            fields.append(f)
    return pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))


def _emit(reader, format: str, output: Path | None, limit: int) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    if format == "table":
        from rich.table import Table

        data = reader.read_all()
        table = Table(show_lines=False)
        for name in data.schema.names:
            table.add_column(name)
        for row in data.slice(0, limit).to_pylist():
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        console.print(table)
        if data.num_rows > limit:
            console.print(f"[dim]{data.num_rows} rows, {limit} shown (use --limit or --format csv)[/]")
        return
    if format == "parquet":
        import pyarrow.parquet as pq

        assert output is not None
        with pq.ParquetWriter(output, reader.schema) as w:
            for b in reader:
                w.write_batch(b)
        return
    sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        if format == "csv":
            import pyarrow.csv as pacsv

            writer = None
            for b in reader:
                b = _json_text(b)
                writer = writer or pacsv.CSVWriter(sink, b.schema)
                writer.write_batch(b)
            if writer is None:
                writer = pacsv.CSVWriter(sink, _json_text(pa.RecordBatch.from_pylist([], schema=reader.schema)).schema)
            writer.close()
        else:
            import json

            for b in reader:
                types = dict(zip(b.schema.names, b.schema.types, strict=True))
                for row in pa.Table.from_batches([b]).to_pylist():
                    plain = {k: _plain(v, types[k]) for k, v in row.items()}
                    sink.write((json.dumps(plain, default=str) + "\n").encode())
        sink.flush()
    finally:
        if output:
            sink.close()


@app.command()
def tables(project: ProjectOpt = None, env: EnvOpt = None) -> None:
    """List the environment's tables with version, row count, size and last write."""
    from rich.table import Table

    from loopline.tables import DeltaStore

    p = load(project, env)
    store = DeltaStore(p.storage_root, p.storage_options)
    names = store.names()
    if not names:
        console.print(f"no tables yet under {p.storage_root}")
        return
    t = Table(title=f"tables · {p.env} · {p.storage_root}")
    for col, just in (
        ("table", "left"),
        ("version", "right"),
        ("rows", "right"),
        ("size", "right"),
        ("last write", "left"),
        ("operation", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for n in names:
        i = store.info(n)
        when = i.last_write.strftime("%Y-%m-%d %H:%M:%S") if i.last_write else ""
        t.add_row(n, str(i.version), f"{i.rows:,}", _size(i.size_bytes), when, i.last_operation or "")
    console.print(t)


def _size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if f < 1024 or unit == "GB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


def _retention(project: Path | None, env: str | None) -> None:
    from loopline.retention import apply_retention

    p = load(project, env)
    if not p.config.retention:
        console.print("no `retention:` configured; nothing to do")
        return
    results = apply_retention(p)
    if not results:
        console.print("no retained tables exist yet; nothing to do")
    for r in results:
        console.print(
            f"{r.table}: deleted {r.rows_deleted:,} rows with {r.column} < {r.cutoff:%Y-%m-%d %H:%M}, "
            f"vacuumed {r.files_removed} files (version {r.version})"
        )


@app.command()
def retention(project: ProjectOpt = None, env: EnvOpt = None) -> None:
    """Apply `retention:`: delete rows older than N days per table, then vacuum their files."""
    _retention(project, env)


@run_app.command("retention")
def run_retention(project: ProjectOpt = None, env: EnvOpt = None) -> None:
    """Apply retention (as a job)."""
    _retention(project, env)
