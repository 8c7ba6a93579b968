"""`loopline init DIR`: scaffold a new project (config, hooks, tests, CI workflow, Dockerfile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopline.cli import app, console


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in (new or empty).")],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Project name (default: the folder's name).", show_default=False),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty folder, overwriting template files.")
    ] = False,
) -> None:
    """Create a new loopline project: loopline.yaml, feature/training hooks, tests, CI workflow, Dockerfile."""
    from loopline.scaffold import init_project

    result = init_project(directory, name, force=force)
    from rich.markup import escape

    console.print(
        f"[green]Created[/] project [bold]{escape(result.name)}[/] in {escape(str(result.root))} "
        f"({len(result.files)} files)"
    )
    for path in result.files:
        console.print(f"  {path.relative_to(result.root)}", highlight=False, markup=False)
    console.print("\nNext:")
    for step in (
        f"cd {result.root}",
        'python -m pip install -e ".[dev]"',
        "pytest",
        "loopline check",
        "loopline run ingest --env dev",
        "loopline run train --env dev",
    ):
        console.print(f"  {step}", highlight=False, markup=False)
