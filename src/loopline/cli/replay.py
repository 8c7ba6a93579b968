"""`loopline replay` (the loop on a labelled history, window by window, against never-retrained and oracle)
and `loopline demo` (the replay of the Bikeshare example)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loopline.cli import EnvOpt, ProjectOpt, app, console, load

if TYPE_CHECKING:
    from loopline.replay import ReplayResult


def _print(result: ReplayResult) -> None:
    from rich.table import Table

    better = "lower" if result.lower_is_better else "higher"
    for p in result.policies:
        table = Table(title=f"policy {p.name}: {result.metric} per window ({better} is better)", title_justify="left")
        for col in ("window", "rows", "champion", "loop", "never retrained", "oracle", "drift share", "action"):
            table.add_column(col, justify="left" if col in ("window", "action") else "right")
        for w in p.windows:
            table.add_row(
                w.label,
                str(w.rows),
                f"v{w.champion_version}",
                _num(w.loop),
                _num(w.never_retrained),
                _num(w.oracle),
                _num(w.drift_share, 2),
                w.action,
            )
        console.print(table)
    summary = Table(title=f"means of {result.metric} over the replayed windows", title_justify="left")
    for col in ("policy", "loop", "never retrained", "oracle", "loop / oracle"):
        summary.add_column(col, justify="left" if col == "policy" else "right")
    for p in result.policies:
        loop, oracle = p.mean("loop"), p.mean("oracle")
        ratio = f"{loop / oracle:.3f}" if loop is not None and oracle else "-"
        summary.add_row(p.name, _num(loop), _num(p.mean("never_retrained")), _num(oracle), ratio)
    console.print(summary)
    console.print(f"report: {result.report}  ({result.seconds:.0f} s; table `replay`, replay_id {result.replay_id})")


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


@app.command("replay")
def replay_command(
    source: Annotated[str | None, typer.Argument(help="Labelled history to replay (default: replay.source).")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    every: Annotated[
        str | None, typer.Option("--every", help="Window length by model.time_column: 1mo, 2w, 7d.")
    ] = None,
    rows: Annotated[int | None, typer.Option("--rows", min=1, help="Window length in rows instead.")] = None,
    initial: Annotated[int | None, typer.Option("--initial", min=1, help="Windows the first model trains on.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric compared per window.")] = None,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Also replay this replay.policies entry.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override for this replay, e.g. training.refit=false.")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="name=value for the source's query.")] = None,
    serve: Annotated[
        bool | None, typer.Option("--serve/--no-serve", help="Send a sample of each window through real HTTP.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Replay a labelled history through the real loop, window by window: the champion of each moment vs the
    model never retrained vs an oracle refit every window. Writes the `replay` table and an HTML page."""
    from loopline.replay import replay
    from loopline.sources import parse_params

    p = load(project, env)
    name = source or p.config.replay.source or "source"
    result = replay(
        p,
        source=source,
        params=parse_params(param or [], name),
        every=every,
        rows=rows,
        initial=initial,
        metric=metric,
        policies=policy or [],
        sets=set_ or [],
        serve=serve,
        say=(lambda _line: None) if json_out else (lambda line: console.print(line, highlight=False)),
    )
    if json_out:
        print(json.dumps(result.to_dict(), default=str, indent=2))
    else:
        _print(result)


@app.command("demo")
def demo_command(
    project: Annotated[Path, typer.Option("--project", "-p", help="The Bikeshare example project.")] = Path(
        "examples/bikeshare"
    ),
    env: EnvOpt = None,
    sample: Annotated[int, typer.Option(help="Rows per month sent through the HTTP server.")] = 24,
) -> None:
    """Replay 2011 of Capital Bikeshare through the whole loop (real HTTP server included): month by month the
    loop's champion vs the never-retrained Jan-Mar model vs an oracle refit every month."""
    from loopline.replay import is_demo_project, replay

    p = load(project, env)
    if not is_demo_project(p):  # the replay wipes .loopline/replay/ state: never in someone else's project
        from loopline.errors import ConfigError

        raise ConfigError(
            f"{p.config_path} is not the Bikeshare example; `loopline demo` runs only on it (nothing was changed)",
            hint="replay your own project with `loopline replay -p DIR`; the demo is `loopline demo -p "
            "examples/bikeshare` (or a copy of that folder)",
        )
    result = replay(p, serve=True, sample=sample, say=lambda line: console.print(line, highlight=False))
    _print(result)
