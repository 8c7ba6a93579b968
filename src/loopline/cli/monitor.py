"""`loopline monitor` and `loopline run monitor`: drift, performance and range checks of one window."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load, run_app
from loopline.cli.window import SinceOpt, TimeOpt, UntilOpt, WindowOpt, time_basis, when, window_length

if TYPE_CHECKING:
    from loopline.monitoring.monitor import MonitorResult
    from loopline.monitoring.performance import PerformanceResult

VERDICT_STYLE = {"ok": "green", "breach": "bold red", "no_data": "yellow"}


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _verdict(v: str) -> str:
    return f"[{VERDICT_STYLE.get(v, '')}]{v.replace('_', ' ')}[/]"


def print_result(result: MonitorResult) -> None:
    """A table per feature, the check-level verdicts, the report path."""
    from rich.table import Table

    r = result
    console.print(
        f"monitoring {r.model_name} v{r.model_version} · window {r.window_start:%Y-%m-%d %H:%M} .. "
        f"{r.window_end:%Y-%m-%d %H:%M} UTC · reference: features version {r.features_version}",
        highlight=False,
    )
    table = Table(title="feature drift", title_justify="left")
    for col in ("feature", "statistic", "value", "threshold", "verdict", "ref n", "cur n"):
        table.add_column(col, justify="right" if col in ("value", "threshold", "ref n", "cur n") else "left")
    rows = list(r.drift.features) + list(r.prediction_drifts)
    for f in rows:
        stat = f"{f.statistic} (p-value)" if f.statistic in ("ks", "chi2") else f.statistic
        table.add_row(
            f.feature, stat, _num(f.value), _num(f.threshold), _verdict(f.verdict), str(f.n_reference), str(f.n_current)
        )
    console.print(table)
    checks = Table(title="checks", title_justify="left")
    for col in ("check", "value", "threshold", "verdict", "detail"):
        checks.add_column(col)
    d = r.drift
    checks.add_row(
        "dataset drift (share)",
        _num(d.share),
        _num(d.drift_share),
        _verdict(d.verdict),
        ", ".join(d.drifted) or "none drifted",
    )
    for p in r.prediction_drifts:
        what = "prediction drift" if p.feature == "prediction" else f"{p.feature} drift"
        checks.add_row(f"{what} ({p.statistic})", _num(p.value), _num(p.threshold), _verdict(p.verdict), p.detail)
    if r.performance:
        w = r.performance.watched
        checks.add_row(
            f"performance ({r.performance.metric})",
            _num(w.value if w else None),
            _num(w.threshold if w else None),
            _verdict(r.performance.verdict),
            r.performance.message,
        )
    if r.range:
        checks.add_row(
            f"{r.range.column} range (share out)",
            _num(r.range.share),
            _num(r.range.threshold),
            _verdict(r.range.verdict),
            r.range.message,
        )
    console.print(checks)
    if r.performance is not None:
        for note in r.performance.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        if r.performance.class_checks:
            console.print(per_class_table(r.performance))
    console.print(f"verdict: {_verdict(r.verdict)} · ", end="")
    console.print(r.message, markup=False, highlight=False)
    if r.report_html:
        console.print(f"report: {r.report_html}", highlight=False)
        console.print(f"json:   {r.report_json}", highlight=False)


def per_class_table(perf: PerformanceResult) -> Any:
    """Precision / recall / F1 per class in the window (gate-time value in parentheses) and support."""
    from rich.markup import escape
    from rich.table import Table

    from loopline.monitoring.performance import label_text

    table = Table(title="per class: window (gate-time test)", title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    by_class: dict[str, dict[str, Any]] = {}
    for c in perf.class_checks:
        cell = _num(c.value) + (f" ({_num(c.baseline)})" if c.baseline is not None else "")
        if c.verdict == "breach":
            cell = f"[bold red]{cell}[/]"
        by_class.setdefault(escape(label_text(c.label)), {"support": c.n})[c.statistic] = cell
    for label, cells in by_class.items():
        table.add_row(
            label, cells.get("precision", "-"), cells.get("recall", "-"), cells.get("f1", "-"), str(cells["support"])
        )
    return table


def _finish(result: MonitorResult) -> None:
    print_result(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command("monitor")
def monitor_cmd(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    window: WindowOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    time: TimeOpt = None,
) -> None:
    """Compare a window of production inputs with the champion's training data; check labels and range.

    Exit codes: 0 within thresholds (or no data in the window); 10 on a breach: dataset or prediction
    drift, performance below the gate-time metric, or too many predictions out of range.
    """
    from loopline.monitoring.monitor import monitor

    length = window_length(window)
    proj = load(project, env)
    basis = time_basis(time)
    _finish(monitor(proj, length, when(since, "--since"), when(until, "--until"), time=basis))


@run_app.command("monitor")
def run_monitor(
    project: ProjectOpt = None,
    env: EnvOpt = None,
    window: WindowOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    time: TimeOpt = None,
) -> None:
    """Run the monitor job (recorded in the `runs` table); exit 10 on a breach."""
    from loopline.jobs import run_job

    proj = load(project, env)
    given = (("window", window), ("since", when(since, "--since")), ("until", when(until, "--until")))
    options: dict[str, object] = {k: v for k, v in (*given, ("time", time_basis(time))) if v is not None}
    record = run_job(proj, "monitor", **options)  # type: ignore[arg-type]
    if record.status == "skipped":
        console.print(f"monitor skipped: {record.summary()}", highlight=False)
        return
    _finish(record.result)  # type: ignore[arg-type]
