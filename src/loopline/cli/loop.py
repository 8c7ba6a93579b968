"""`loopline loop` / `loopline run loop`: monitor -> retrain -> gate -> promote, each decision recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load, run_app
from loopline.cli.window import SinceOpt, TimeOpt, UntilOpt, WindowOpt, time_basis, when, window_length

if TYPE_CHECKING:
    from loopline.loop import LoopResult

ScheduledOpt = Annotated[
    bool, typer.Option("--scheduled", help="Retrain even without a breach (the schedule says so).")
]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="name=value for the retraining source.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _run(
    project_dir: Path | None,
    env: str | None,
    window: str | None,
    since: str | None,
    until: str | None,
    scheduled: bool,
    params: list[str] | None,
    as_json: bool,
    time: str | None = None,
) -> None:
    from loopline.jobs import run_job
    from loopline.sources import parse_params

    project = load(project_dir, env)
    win = window_length(window)
    source = project.config.retraining.source
    options: dict[str, Any] = {
        "window": win,
        "since": when(since, "--since"),
        "until": when(until, "--until"),
        "scheduled": scheduled,
        "params": parse_params(params or [], source or "retraining.source"),
        "time": time_basis(time),
    }
    with console.status("loop: monitoring"):
        record = run_job(project, "loop", **options)
    if record.status == "skipped":
        console.print(f"[yellow]skipped:[/] {record.error}")
        return
    result: LoopResult = record.result  # type: ignore[assignment]
    if as_json:
        print(json.dumps(result.to_dict(), default=str, indent=2))
    else:
        _print(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _print(result: LoopResult) -> None:
    from rich.table import Table

    table = Table(title=f"loop {result.loop_id}", title_justify="left")
    for col in ("step", "outcome", "reasons"):
        table.add_column(col)
    for d in result.decisions:
        reasons = json.loads(d["reasons"])
        text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
        colour = {
            "breach": "yellow",
            "failed": "red",
            "refused": "red",
            "needs_review": "red",
            "promoted": "green",
            "passed": "green",
            "ok": "green",
        }.get(d["outcome"], "white")
        table.add_row(d["step"], f"[{colour}]{d['outcome']}[/]", text[:200])
    console.print(table)
    if result.monitor is not None and result.monitor.report_html:
        console.print(f"report: {result.monitor.report_html}")
    console.print(f"[bold]action:[/] {result.summary()}")


@app.command("loop")
def loop_command(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    window: WindowOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    scheduled: ScheduledOpt = False,
    param: ParamOpt = None,
    json_out: JsonOpt = False,
    time: TimeOpt = None,
) -> None:
    """Monitor; on a breach (or --scheduled) retrain, gate and promote. Exit 4: refused, 12: needs review."""
    _run(project, env, window, since, until, scheduled, param, json_out, time)


run_app.command("loop", help="Run the loop once (as a job, like `loopline loop`).")(loop_command)
