"""`loopline ingest`, `loopline validate` and `loopline run ingest`: ingest -> validate -> features."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load, run_app
from loopline.errors import ValidationFailed

if TYPE_CHECKING:
    from loopline.ingest import PipelineResult

ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="Query parameter name=value for `kind: sql` sources (repeatable).",
        metavar="NAME=VALUE",
        show_default=False,
    ),
]
BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-id",
        "-b",
        help="Batch id (default: the source's `_batch_id` column, else <source>-<content hash>).",
        show_default=False,
    ),
]
_STAGES = {
    "ingest": "reading the source into raw",
    "validate": "checking the contract",
    "features": "building features",
}


def _pipeline(
    project_dir: Path | None, env: str | None, source: str | None, params: list[str], batch: str | None, *, job: bool
) -> None:
    from loopline.ingest import default_source, ingest_job
    from loopline.sources import parse_params

    project = load(project_dir, env)
    source = source or default_source(project)
    options: dict[str, Any] = {"source": source, "params": parse_params(params, source), "batch_id": batch}
    with console.status("starting") as status:

        def on_stage(name: str) -> None:
            status.update(f"[bold]{name}[/]: {_STAGES[name]}")

        try:
            if job:
                from loopline.jobs import run_job

                record = run_job(project, "ingest", on_stage=on_stage, **options)
                if record.status == "skipped":
                    status.stop()
                    console.print(f"[yellow]skipped:[/] {record.error}")
                    return
                result: PipelineResult = record.result  # type: ignore[assignment]
            else:
                result = ingest_job(project, on_stage=on_stage, **options)
        except ValidationFailed as exc:
            status.stop()
            if exc.report is not None:
                console.print(exc.report.renderable())  # type: ignore[attr-defined]
            raise
    _print_result(project.config.project, project.env, result)


def _print_result(name: str, env: str, result: PipelineResult) -> None:
    from rich.table import Table

    table = Table(title=f"{name} [{env}] batch {result.ingest.batch_id}", title_justify="left")
    for col in ("source", "rows in", "quarantined", "features rows", "features version", "raw version"):
        table.add_column(col, justify="left" if col == "source" else "right")
    table.add_row(
        result.ingest.source,
        str(result.ingest.rows),
        str(result.validation.failing_rows),
        str(result.features.rows),
        str(result.features.version),
        str(result.ingest.raw_version),
    )
    console.print(table)
    console.print(result.validation.renderable())


@app.command("ingest")
def ingest_cmd(
    source: Annotated[str, typer.Argument(help="Source name under `sources:` in loopline.yaml.")],
    param: ParamOpt = None,
    batch_id: BatchOpt = None,
    env: EnvOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Ingest one batch from SOURCE, validate it against the contract and build its features."""
    _pipeline(project, env, source, param or [], batch_id, job=False)


@run_app.command("ingest")
def run_ingest(
    source: Annotated[str | None, typer.Argument(help="Source name (default: the first configured).")] = None,
    param: ParamOpt = None,
    batch_id: BatchOpt = None,
    env: EnvOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Job: ingest -> validate -> features for one batch, recorded in `runs` (like `loopline ingest`)."""
    _pipeline(project, env, source, param or [], batch_id, job=True)


@app.command("validate")
def validate_cmd(
    batch_id: Annotated[str, typer.Option("--batch-id", "-b", help="Batch id in the raw table.", show_default=False)],
    env: EnvOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Re-validate a batch already in `raw` (quarantine and report are replaced; exit 3 if it fails)."""
    from loopline.ingest import reports_dir
    from loopline.tables import DeltaStore
    from loopline.validate import validate_batch

    proj = load(project, env)
    store = DeltaStore(proj.storage_root, proj.storage_options)
    try:
        with console.status(f"validating batch {batch_id}"):
            outcome = validate_batch(
                proj.config.contract, store, batch_id, root=proj.root, reports_dir=reports_dir(proj)
            )
    except ValidationFailed as exc:
        if exc.report is not None:
            console.print(exc.report.renderable())  # type: ignore[attr-defined]
        raise
    console.print(outcome.report.renderable())
