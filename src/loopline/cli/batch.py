"""`loopline run batch` and `loopline publish`: thin wiring around loopline.batch and loopline.publish."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load, run_app

if TYPE_CHECKING:
    from loopline.batch import BatchResult


class Engine(StrEnum):
    local = "local"
    spark = "spark"


@run_app.command("batch")
def run_batch(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    batch_id: Annotated[
        str | None,
        typer.Option("--batch-id", help="Batch id (default: `<input>-v<version>`); rerunning one replaces it."),
    ] = None,
    engine: Annotated[
        Engine | None, typer.Option("--engine", help="Scoring engine (default: batch.engine).", show_default=False)
    ] = None,
    input_batch: Annotated[
        str | None,
        typer.Option("--input-batch", help="Score only the input rows with this _batch_id.", show_default=False),
    ] = None,
) -> None:
    """Score the input table (or batch.query) with the @champion model into the `predictions` table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from loopline.jobs import run_job

    proj = load(project, env)
    with Progress(
        TextColumn("[bold]scoring[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("score", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        record = run_job(
            proj,
            "batch",
            batch_id=batch_id,
            progress=progress,
            engine=engine.value if engine else None,
            input_batch=input_batch,
        )
    if record.status == "skipped":
        console.print(f"[yellow]skipped:[/] {record.error}")
        return
    result: BatchResult = record.result  # type: ignore[assignment]
    flagged = f", [yellow]{result.out_of_range} out of range[/]" if result.out_of_range else ""
    console.print(
        f"[green]scored[/] {result.rows} rows of {result.input} with {result.model_name} "
        f"v{result.model_version} -> predictions (batch [bold]{result.batch_id}[/], table version "
        f"{result.table_version}) in {result.seconds:.1f}s ({result.rows_per_second:,.0f} rows/s, "
        f"{result.engine}){flagged}",
        highlight=False,
    )


@app.command("publish")
def publish_cmd(
    table: Annotated[str, typer.Argument(help="Table to publish.")] = "predictions",
    to: Annotated[
        str,
        typer.Option(
            "--to", help="postgresql://user:password@host:port/db", envvar="LOOPLINE_PUBLISH_URL", show_default=False
        ),
    ] = ...,  # type: ignore[assignment]
    target: Annotated[
        str | None, typer.Option("--table", help="Target table, optionally schema.table (default: same name).")
    ] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
) -> None:
    """Upsert the current snapshot of a table (keys + batch id) into PostgreSQL, in one transaction."""
    from loopline.publish import publish

    proj = load(project, env)
    r = publish(proj, table=table, to=to, target_table=target)
    console.print(
        f"[green]published[/] {r.rows} rows of {r.table} (version {r.table_version}) to {r.target} at {r.url} "
        f"({r.inserted} inserted, {r.updated} updated, {r.deleted} removed) in {r.seconds:.1f}s",
        highlight=False,
    )
