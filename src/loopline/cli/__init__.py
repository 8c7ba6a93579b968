"""The `loopline` command: parses, wires stages together, prints. No stage logic lives here.

Sub-modules add their commands to ``app`` (and to ``run_app`` for `loopline run JOB`); they import
heavy libraries only inside command bodies so `loopline --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from loopline.errors import LooplineError

app = typer.Typer(
    name="loopline",
    help="The whole production loop of a model from one project folder and one loopline.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from loopline import __version__

        typer.echo(f"loopline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """The whole production loop of a model from one project folder and one loopline.yaml."""


run_app = typer.Typer(help="Run one job by hand: ingest, train, batch, monitor, loop, retention.", no_args_is_help=True)
app.add_typer(run_app, name="run")

# Off a terminal (logs, CI, pipes) rich would wrap every line at 80 columns, splitting messages mid-sentence:
# there, lines are as long as they need to be (COLUMNS still wins when set).
_WIDE = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240
console = Console(width=_WIDE)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 240)

ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project folder (default: nearest folder with loopline.yaml).",
        envvar="LOOPLINE_PROJECT",
        show_default=False,
    ),
]
EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        help="Environment (default: the first under `environments`).",
        envvar="LOOPLINE_ENV",
        show_default=False,
    ),
]


def load(project: Path | None, env: str | None):  # type: ignore[no-untyped-def]
    """Load the project once, at the edge."""
    from loopline.config import load_project, private_state

    loaded = load_project(project, env)
    private_state()
    return loaded


def fail(exc: LooplineError) -> None:
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(exc.message, highlight=False, markup=False)
    if exc.hint:
        err_console.print("[yellow]Hint:[/] ", end="")
        err_console.print(exc.hint, highlight=False, markup=False)


def _register() -> None:
    import importlib

    for name in (
        "data",
        "pipeline",
        "scaffold",
        "lifecycle",
        "batch",
        "serving",
        "monitor",
        "ops",
        "status",
        "loop",
        "replay",
    ):
        importlib.import_module(f"loopline.cli.{name}")


def run(args: list[str] | None = None) -> int:
    """Run one command and return its exit code (errors printed, never a traceback)."""
    _register()
    try:
        app(args=args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LooplineError as exc:
        fail(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:  # a bug in loopline: say so plainly, traceback only on request
        if os.environ.get("LOOPLINE_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: ", end="")
        err_console.print(str(exc), markup=False, highlight=False)
        err_console.print("[yellow]Hint:[/] rerun with LOOPLINE_DEBUG=1 for the traceback and report it")
        return 70
    return 0


def main() -> None:
    """The console script: run, flush, and leave without tearing down native thread pools.

    Native libraries (Arrow, DuckDB, delta-rs) keep worker threads whose C++ destructors can abort the
    process at interpreter teardown ("terminate called without an active exception"), turning a
    finished command's exit code into -6. Everything of ours is written and flushed by then.
    """
    import logging

    code = run()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
