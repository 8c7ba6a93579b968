"""Model lifecycle commands: `run train`, `promote`, `rollback`, `retire`, `history`.

Thin: parse, load the project, call the stage, print. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load, run_app

if TYPE_CHECKING:
    from loopline.evaluation import GateResult
    from loopline.registry import RegistryEvent
    from loopline.training import TrainResult

GATE_REFUSED_EXIT = 4

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def render_gate(result: GateResult) -> None:
    from rich.table import Table

    table = Table(title=f"gate: {result.model} version {result.candidate_version}", title_justify="left")
    table.add_column("metric")
    table.add_column(f"candidate v{result.candidate_version}", justify="right")
    table.add_column(
        f"champion v{result.champion_version}" if result.champion_version else "champion (none)", justify="right"
    )
    for metric, cand, champ in result.rows():
        table.add_row(metric, cand, champ)
    console.print(table)
    colour = "green" if result.passed else "red"
    console.print(
        f"gate verdict: [bold {colour}]{result.verdict}[/] ({len(result.rules_checked)} rules checked, "
        f"{result.n_test} test rows)"
    )
    for rule in result.failed_rules:
        console.print("  [red]x[/] ", end="")
        console.print(rule, markup=False, highlight=False)
    for note in result.notes:
        console.print("  [dim]note:[/] ", end="")
        console.print(note, markup=False, highlight=False)


def _render_event(event: RegistryEvent) -> None:
    to = f"version {event.to_version}" if event.to_version else "(removed)"
    frm = f"version {event.from_version}" if event.from_version else "(none)"
    alias = f"@{event.alias}" if event.alias else "(no alias)"
    console.print(f"{event.action}: {event.model} {alias} {frm} -> {to}", markup=False, highlight=False)


@run_app.command("train")
def train_cmd(
    data_version: Annotated[
        int | None, typer.Option("--data-version", help="Features table Delta version (default: latest).")
    ] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on the features table, register a new model version and run the champion/challenger gate."""
    from rich.table import Table

    from loopline.jobs import run_job

    p = load(project, env)
    record = run_job(p, "train", data_version=data_version)
    if record.status == "skipped":
        console.print(f"[yellow]skipped:[/] {record.error}")
        return
    result: TrainResult = record.result  # type: ignore[assignment]
    if as_json:
        _print_json(result.to_dict())
    else:
        console.print(
            f"run [bold]{result.run_id}[/]  model [bold]{result.model}[/] version "
            f"[bold]{result.version}[/]  (features v{result.features_version}: {result.n_train} train / "
            f"{result.n_valid} valid / {result.n_test} test rows, {result.duration_s:.1f}s)"
        )
        table = Table(title="training metrics", title_justify="left")
        table.add_column("metric")
        table.add_column("valid", justify="right")
        table.add_column("test", justify="right")
        base = sorted({k.split("_", 1)[1] for k in result.metrics})
        for m in base:
            v, t = result.metrics.get(f"valid_{m}"), result.metrics.get(f"test_{m}")
            table.add_row(m, "-" if v is None else f"{v:.6g}", "-" if t is None else f"{t:.6g}")
        console.print(table)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", markup=False, highlight=False)
        render_gate(result.gate)
        if result.gate.passed:
            console.print(f"version {result.version} is @challenger; promote it with: loopline promote --env {p.env}")
    if not result.gate.passed:
        raise typer.Exit(GATE_REFUSED_EXIT)


@app.command("promote")
def promote_cmd(
    version: Annotated[int | None, typer.Option("--version", help="Version to promote (default: @challenger).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the version did not pass the gate.")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (required with --force).")] = None,
    from_env: Annotated[str | None, typer.Option("--from", help="Copy this environment's champion ...")] = None,
    to_env: Annotated[str | None, typer.Option("--to", help="... into this environment, gated on its data.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move @champion to the challenger (or --version N); or copy a champion between environments."""
    from loopline import registry
    from loopline.errors import RegistryError

    if from_env or to_env:
        if not (from_env and to_env):
            raise RegistryError("--from and --to go together", hint="loopline promote --from staging --to prod")
        if version is not None or force:
            raise RegistryError("--from/--to copies the source champion; --version and --force do not apply")
        result = registry.copy(load(project, from_env), load(project, to_env), reason=reason)
        if as_json:
            _print_json(result.to_dict())
        else:
            console.print(
                f"copied {result.source_model} version {result.source_version} -> {result.model} version "
                f"{result.version}",
                markup=False,
                highlight=False,
            )
            render_gate(result.gate)
            if result.event is not None:
                _render_event(result.event)
        if not result.promoted:
            raise typer.Exit(GATE_REFUSED_EXIT)
        return
    p = load(project, env)
    event = registry.promote(p, version=version, force=force, reason=reason)
    if as_json:
        _print_json(event.to_dict())
    else:
        _render_event(event)


@app.command("rollback")
def rollback_cmd(
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded in the audit log).")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point @champion back to the previous champion recorded in the audit log."""
    from loopline import registry

    event = registry.rollback(load(project, env), reason=reason)
    if as_json:
        _print_json(event.to_dict())
    else:
        _render_event(event)


@app.command("retire")
def retire_cmd(
    version: Annotated[int, typer.Option("--version", help="Version to retire.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded in the audit log).")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a version's aliases and tag it retired; a retired version cannot be promoted."""
    from loopline import registry

    events = registry.retire(load(project, env), version, reason=reason)
    if as_json:
        _print_json([e.to_dict() for e in events])
    else:
        console.print(f"version {version} retired")
        for e in events:
            if e.alias:
                _render_event(e)


@app.command("history")
def history_cmd(
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Show the newest N rows.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The registry audit log (registry_events) of the environment's model, newest first."""
    from rich.table import Table

    from loopline import registry

    p = load(project, env)
    rows = registry.history(p, limit=limit, reconciled=True)
    if as_json:
        _print_json([r.to_dict() for r in rows])
        return
    table = Table(title=f"registry history: {p.registered_model}", title_justify="left")
    for col in ("when (UTC)", "action", "alias", "from", "to", "gate", "state", "actor", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            r.action,
            r.alias or "-",
            r.from_version or "-",
            r.to_version or "-",
            r.gate_verdict,
            r.state,
            r.actor,
            r.reason,
        )
    console.print(table)
    if not rows:
        console.print(f"no registry events yet for {p.registered_model}")
