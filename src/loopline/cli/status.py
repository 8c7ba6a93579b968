"""`loopline status` and `loopline review list|label|clear`.

`loopline status` exits 0, or 12 while the environment needs human review (the loop refused too many
candidates in a row); `loopline review clear` lifts that flag.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load

if TYPE_CHECKING:
    from loopline.status import StatusReport, VersionStatus

review_app = typer.Typer(
    help="Expert review: list flagged predictions, record correct labels as feedback, clear the review flag.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
VERDICT_STYLE = {
    "ok": "green",
    "breach": "bold red",
    "no_data": "yellow",
    "passed": "green",
    "failed": "bold red",
    "ungated": "yellow",
}
RUN_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow", "running": "cyan", "crashed": "bold red"}


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _ts(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _styled(value: str | None) -> str:
    if not value:
        return "[dim]none[/]"
    style = VERDICT_STYLE.get(value, "")
    return f"[{style}]{value}[/]" if style else value


# ----------------------------------------------------------------------------- status
@app.command("status")
def status_cmd(project: ProjectOpt = None, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Champion and challenger with gate metrics, last run of each job, last monitoring verdict,
    needs-review flag and table sizes. Exits 12 while the environment needs human review."""
    from loopline.status import status

    report = status(load(project, env))
    if as_json:
        _echo_json(report.to_dict())
    else:
        _render(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _render(r: StatusReport) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from loopline.cli.data import _size
    from loopline.jobs import JOB_FUNCTIONS

    console.print(f"[bold]{r.project}[/] · env [bold]{r.env}[/] · model [bold]{r.registered_model}[/]")
    console.print(f"[dim]tracking {r.tracking_uri} · tables {r.storage_root}[/]", highlight=False)
    if r.review.needed:
        body = f"[bold]{r.review.reason or 'no reason recorded'}[/]"
        if r.review.since:
            body += f"\n[dim]since {r.review.since}[/]"
        body += "\nThe loop does not retrain or promote until a human runs `loopline review clear`."
        console.print(Panel.fit(body, title="NEEDS HUMAN REVIEW", border_style="bold red", title_align="left"))

    models = Table(title="models", title_justify="left", expand=False)
    for col in ("alias", "version", "gate", "gate metrics", "compared with", "run id", "registered"):
        models.add_column(col)
    if not r.registry_exists:
        models.add_row("[dim]none[/]", "", "", f"no registered model {r.registered_model!r} yet", "", "", "")
    for alias, v in (("champion", r.champion), ("challenger", r.challenger)):
        if not r.registry_exists:
            break
        if v is None:
            models.add_row(alias, "[dim]none[/]", "", "", "", "", "")
            continue
        models.add_row(*_version_row(v))
    if r.latest is not None:
        models.add_row(*_version_row(r.latest))
    console.print(models)
    if r.champion is not None and r.champion.per_class:
        console.print(f"champion v{r.champion.version} per class (gate): " + per_class_line(r.champion.per_class))

    runs = Table(title="last run of each job", title_justify="left")
    for col in ("job", "status", "started (UTC)", "duration", "detail"):
        runs.add_column(col)
    for job in [*JOB_FUNCTIONS, *(j for j in r.runs if j not in JOB_FUNCTIONS)]:
        rec = r.runs.get(job)
        if rec is None:
            runs.add_row(job, "[dim]none[/]", "", "", "")
            continue
        style = RUN_STYLE.get(rec.status, "")
        detail = (rec.error or "").splitlines()[0][:120] if rec.error else ""
        runs.add_row(job, f"[{style}]{rec.status}[/]", _ts(rec.started_at), f"{rec.duration_s:.1f}s", detail)
    console.print(runs)

    m = r.monitoring
    if m is None:
        console.print(
            Panel.fit(
                "[dim]none[/] (no monitoring check recorded yet: `loopline monitor`)",
                title="monitoring",
                title_align="left",
            )
        )
    else:
        lines = [f"verdict {_styled(m.verdict)} · checked {_ts(m.checked_at)} UTC · model version {m.model_version}"]
        if m.kinds:
            lines.append(" · ".join(f"{k} {_styled(v)}" for k, v in sorted(m.kinds.items())))
        if m.per_class:
            lines.append("per class (window): " + per_class_line(m.per_class))
        for b in m.breaches[:10]:
            value = f"{b['value']:.4g}" if isinstance(b.get("value"), float) else "-"
            limit = f"{b['threshold']:.4g}" if isinstance(b.get("threshold"), float) else "-"
            where = f" \\[{escape(b['slice'])}]" if b.get("slice") else ""
            stat = f" {b['statistic']}" if b.get("feature") == "per_class" and b.get("statistic") else ""
            lines.append(f"  [red]breach[/] {b['kind']}: {b['feature']}{where}{stat} = {value} (threshold {limit})")
        if len(m.breaches) > 10:
            lines.append(f"  ... and {len(m.breaches) - 10} more")
        console.print(Panel.fit("\n".join(lines), title="monitoring", title_align="left"))

    if not r.tables:
        console.print(Panel.fit("[dim]none[/] (no tables written yet)", title="tables", title_align="left"))
    else:
        tables = Table(title="tables", title_justify="left")
        for col, just in (
            ("table", "left"),
            ("version", "right"),
            ("rows", "right"),
            ("size", "right"),
            ("last write (UTC)", "left"),
        ):
            tables.add_column(col, justify=just)  # type: ignore[arg-type]
        for t in r.tables:
            tables.add_row(t.name, str(t.version), f"{t.rows:,}", _size(t.size_bytes), _ts(t.last_write))
        console.print(tables)
    review = "[bold red]yes[/] (exit code 12)" if r.review.needed else "[green]no[/]"
    console.print(f"needs review: {review}")


PER_CLASS_SHOWN = 8


def per_class_line(view: dict[str, Any]) -> str:
    """``label P=.. R=.. F1=.. n=..`` per class, ``·``-separated (a breached statistic in red)."""
    from rich.markup import escape

    classes = list(view.get("classes") or [])
    verdicts = view.get("verdicts") or {}
    parts = []
    for i, cls in enumerate(classes[:PER_CLASS_SHOWN]):
        label = ("true" if cls else "false") if isinstance(cls, bool) else str(cls)
        cells = []
        for stat, short in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
            values = view.get(stat) or []
            v = values[i] if i < len(values) else None
            text = f"{short}={v:.2f}" if isinstance(v, (int, float)) else f"{short}=-"
            if i < len(verdicts.get(stat, [])) and verdicts[stat][i] == "breach":
                text = f"[bold red]{text}[/]"
            cells.append(text)
        support = (view.get("support") or [])[i] if i < len(view.get("support") or []) else "-"
        parts.append(f"{escape(label)} {' '.join(cells)} n={support}")
    more = f" · ... and {len(classes) - PER_CLASS_SHOWN} more" if len(classes) > PER_CLASS_SHOWN else ""
    return " · ".join(parts) + more


def _version_row(v: VersionStatus) -> list[str]:
    metrics = ", ".join(f"{k}={val:.4g}" for k, val in v.gate_metrics.items()) or "[dim]none[/]"
    if v.failed_rules:
        metrics += f"\n[red]failed: {', '.join(v.failed_rules)}[/]"
    vs = f"v{v.compared_with}" if v.compared_with else ""
    if v.champion_metrics:
        vs += " (" + ", ".join(f"{k}={val:.4g}" for k, val in v.champion_metrics.items()) + ")"
    version = f"v{v.version}" + (" [yellow](retired)[/]" if v.retired else "")
    return [
        v.alias,
        version,
        _styled(v.gate_verdict),
        metrics,
        vs or "[dim]none[/]",
        (v.run_id or "")[:12],
        _ts(v.created_at),
    ]


# ----------------------------------------------------------------------------- review
@review_app.command("list")
def review_list(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most recent flagged predictions shown.")] = 50,
    min_confidence: Annotated[
        float, typer.Option("--min-confidence", min=0.0, max=1.0, help="Flag classifier predictions below this.")
    ] = 0.6,
    as_json: JsonOpt = False,
) -> None:
    """Predictions flagged for expert review (out of range, NaN, low confidence), newest first, unlabelled only."""
    from rich.table import Table
    from rich.text import Text

    from loopline.review import flagged

    p = load(project, env)
    result = flagged(p, limit=limit, min_confidence=min_confidence)
    if as_json:
        _echo_json(result.to_dict())
        return
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if not result.items:
        done = f" ({result.already_labelled} already labelled)" if result.already_labelled else ""
        console.print(f"nothing to review in env {p.env!r}{done}.")
        return
    table = Table(title=f"flagged for review · env {p.env} · newest first", title_justify="left")
    for col in ("source", "request id / key", "prediction", "confidence", "reason", "model", "when (UTC)"):
        table.add_column(col)
    for f in result.items:
        pred = f"{f.prediction:.4g}" if isinstance(f.prediction, float) else str(f.prediction)
        conf = f"{f.confidence:.3g}" if f.confidence is not None else ""
        table.add_row(
            f.source,
            Text(f.ref),
            Text(pred),
            conf,
            Text(f.reason),
            f"v{f.model_version}" if f.model_version else "",
            _ts(f.at),
        )
    console.print(table)
    console.print(
        f"[dim]{len(result.items)} of {result.total} shown; {result.already_labelled} already labelled. "
        "Label one: loopline review label --request-id ID --label VALUE (or --key col=value)[/]"
    )


@review_app.command("label")
def review_label(
    label: Annotated[
        str,
        typer.Option(
            "--label", "-l", help="The correct label: a number for regression, one of the champion's classes else."
        ),
    ],
    request_id: Annotated[
        str | None, typer.Option("--request-id", "-r", help="Request id from the inference log.", show_default=False)
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key", "-k", help="column=value of a model key (repeat for each key column).", show_default=False
        ),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="Free-text note kept with the label.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record an expert's label for one prediction as feedback (`_source` = review), typed with the champion's
    label contract (an int, bool or text class); a value that is not one of its classes is refused."""
    from loopline.review import label as record

    p = load(project, env)
    result = record(p, label, request_id=request_id, keys=key or None, note=note)
    if as_json:
        _echo_json(result.to_dict())
        return
    what = f"request {request_id}" if request_id else " ".join(key or [])
    console.print(
        f"[green]✓[/] labelled {what} = {result.row['label']!r} (feedback table version {result.table_version})",
        highlight=False,
    )


@review_app.command("clear")
def review_clear(
    reason: Annotated[str | None, typer.Option("--reason", help="Why it is safe to resume.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clear the needs-review flag (a human decision, recorded in registry_events as review_cleared)."""
    from loopline.review import clear

    p = load(project, env)
    result = clear(p, reason)
    if as_json:
        _echo_json(result.to_dict())
        return
    if not result.cleared:
        console.print(f"env {p.env!r} was not flagged for review; nothing to clear.")
        return
    console.print(f"[green]✓[/] review flag cleared by {result.actor} (was: {result.previous_reason})", highlight=False)
