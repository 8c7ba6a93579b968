"""`loopline schedule` and `loopline runs`: the job scheduler and the run history."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Annotated

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, err_console, load

if TYPE_CHECKING:
    from loopline.jobs import RunRecord
    from loopline.scheduler import ScheduledJob

STATUS_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow", "running": "cyan", "crashed": "bold red"}


def _tz(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"must be an IANA time zone like UTC or Europe/Berlin, got {name!r}") from None


def _fmt(ts: datetime, tz: tzinfo = UTC) -> str:
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _plan_table(plan: list[ScheduledJob], env: str, tz_name: str) -> None:
    from rich.table import Table

    table = Table(title=f"loopline schedule · env {env}", title_justify="left")
    table.add_column("job", style="bold")
    table.add_column("cron")
    table.add_column(f"next run ({tz_name})")
    for sj in plan:
        table.add_row(sj.job, sj.cron, _fmt(sj.next_at, sj.next_at.tzinfo or UTC))
    console.print(table)


def _log_run(record: RunRecord) -> None:
    style = STATUS_STYLE.get(record.status, "")
    console.print(
        f"{_fmt(record.started_at)} UTC  [bold]{record.job:<9}[/] [{style}]{record.status:<7}[/] "
        f"{_duration(record.duration_s):>7}  ",
        end="",
    )
    console.print(record.summary(), markup=False, highlight=False)


@app.command("schedule")
def schedule(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Run the jobs due at the next tick, then exit.")] = False,
    max_runs: Annotated[
        int | None, typer.Option("--max-runs", min=1, help="Exit after this many runs.", show_default=False)
    ] = None,
    tz: Annotated[str, typer.Option("--tz", help="Time zone the cron expressions are read in.")] = "UTC",
) -> None:
    """Run the jobs under `schedules:` at their cron times, in the foreground (Ctrl-C stops after the current job)."""
    from loopline.scheduler import Scheduler

    zone = _tz(tz)
    proj = load(project, env)

    def on_error(job: str, exc: Exception) -> None:
        err_console.print(f"[bold red]{job}: could not record the run:[/] ", end="")
        err_console.print(str(exc), markup=False, highlight=False)

    def on_stop(reason: str) -> None:
        err_console.print(f"[yellow]{reason}: stopping after the current job (again to interrupt it)[/]")

    def on_wait(upcoming: ScheduledJob) -> None:
        console.print(f"[dim]next: {upcoming.job} at {_fmt(upcoming.next_at, zone)} {tz} (Ctrl-C stops)[/]")

    sched = Scheduler(proj, tz=zone, on_run=_log_run, on_error=on_error, on_stop=on_stop, on_wait=on_wait)
    _plan_table(sched.plan(), proj.env, tz)
    runs = sched.run(once=once, max_runs=max_runs)
    console.print(f"scheduler stopped after {runs} run(s)" + (f" ({sched.stop_reason})" if sched.stop_reason else ""))


@app.command("runs")
def runs(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only this job.", show_default=False)] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="Only runs with this status: ok, failed, skipped, running, crashed.", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most recent runs shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """List recorded job runs, newest first (from the `runs` table); a run whose process died is `crashed`."""
    from rich.table import Table
    from rich.text import Text

    from loopline.jobs import JOB_NAMES, run_history

    if job is not None and job not in JOB_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(JOB_NAMES)}, got {job!r}", param_hint="'--job'")
    if status is not None and status not in STATUS_STYLE:
        raise typer.BadParameter(f"must be one of {', '.join(STATUS_STYLE)}, got {status!r}", param_hint="'--status'")
    proj = load(project, env)
    records = run_history(proj, job=job, status=status, limit=limit)
    if as_json:
        import json

        from loopline.status import _run_dict

        typer.echo(json.dumps([_run_dict(r) for r in records], indent=2, default=str))
        return
    if not records:
        what = " ".join(x for x in (status, f"{job!r}" if job else None) if x)
        console.print(f"no {what + ' ' if what else ''}runs recorded in env {proj.env!r} yet.")
        console.print("[dim]`loopline schedule` and `loopline run JOB` record every run here.[/]")
        return
    table = Table(title=f"runs · env {proj.env} · newest first", title_justify="left")
    table.add_column("started (UTC)")
    table.add_column("job", style="bold")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("error", overflow="fold")
    table.add_column("run id", style="dim")
    for r in records:
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(
            _fmt(r.started_at),
            r.job,
            f"[{style}]{r.status}[/]",
            _duration(r.duration_s),
            Text(r.error.splitlines()[0][:200] if r.error else ""),
            r.run_id[:12],
        )
    console.print(table)
