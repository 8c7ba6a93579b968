"""`loopline init`: write a new project folder from the template in ``loopline/templates/project``.

The template is a plain folder. Files ending in ``.tmpl`` are rendered by replacing ``{{name}}``,
``{{package}}`` and ``{{loopline_version}}`` (nothing else, so GitHub's ``${{ ... }}`` survives);
other files are copied byte for byte. Path parts are renamed on the way: ``__package__`` becomes
the package folder and a ``dot_`` prefix becomes ``.`` (hidden files are not reliably shipped as
package data).
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from loopline.errors import ScaffoldError

TEMPLATE = "project"
_SUFFIX = ".tmpl"
# Stricter than config's project-name pattern: it must also be a valid pip distribution name.
_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
# Package names that would shadow a dependency or collide with a folder of the project.
_RESERVED = {
    "loopline", "data", "tests", "test", "mlflow", "pandas", "numpy", "sklearn", "scipy", "pyarrow",
    "deltalake", "duckdb", "pydantic", "yaml", "typer", "rich", "fastapi", "uvicorn", "lightgbm", "optuna",
}  # fmt: skip


@dataclass(frozen=True)
class ScaffoldResult:
    """What `init_project` wrote."""

    root: Path
    name: str
    package: str
    files: list[Path]


def package_name(name: str) -> str:
    """The snake_case Python package name of a project name: ``Bike-Share.v2`` -> ``bike_share_v2``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^A-Za-z0-9]+", "_", snake).strip("_").lower()


def check_name(name: str) -> str:
    """Validate a project name; return its package name or raise ScaffoldError naming the problem."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"project name {name!r} is not valid: it must start with a letter, end with a letter or digit, "
            "and contain only letters, digits, '_', '.' and '-'",
            hint="pass a name such as --name my-project",
        )
    package = package_name(name)
    if keyword.iskeyword(package) or package in _RESERVED or package in sys.stdlib_module_names:
        raise ScaffoldError(
            f"project name {name!r} gives the package name {package!r}, which would shadow a Python keyword, "
            "a standard-library module, a dependency or a project folder",
            hint=f"pass another name, e.g. --name {name}-model",
        )
    return package


def render(text: str, values: dict[str, str]) -> str:
    """Replace each ``{{key}}`` of ``values`` in ``text``; leave every other brace alone."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _target(rel: Path, package: str) -> Path:
    parts = []
    for part in rel.parts:
        if part == "__package__":
            part = package
        elif part.startswith("dot_"):
            part = "." + part[len("dot_") :]
        parts.append(part)
    out = Path(*parts)
    return out.with_name(out.name[: -len(_SUFFIX)]) if out.name.endswith(_SUFFIX) else out


def _template_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )  # fmt: skip


def init_project(directory: Path | str, name: str | None = None, *, force: bool = False) -> ScaffoldResult:
    """Write a new loopline project into ``directory`` (created if missing).

    ``name`` defaults to the folder's name. A folder that exists and is not empty is refused unless
    ``force`` is set; then template files overwrite files of the same path and nothing else is touched.
    """
    from loopline import __version__

    root = Path(directory).expanduser().resolve()
    name = root.name if name is None else name
    package = check_name(name)
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a folder", hint="pass a folder path to `loopline init`")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise ScaffoldError(
            f"folder {root} is not empty",
            hint="pick a new or empty folder, or pass --force to write the template files over it",
        )
    values = {"name": name, "package": package, "loopline_version": __version__}
    written: list[Path] = []
    with as_file(files("loopline").joinpath("templates", TEMPLATE)) as template:
        for src in _template_files(template):
            dest = root / _target(src.relative_to(template), package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.name.endswith(_SUFFIX):
                dest.write_text(render(src.read_text(encoding="utf-8"), values), encoding="utf-8")
            else:
                dest.write_bytes(src.read_bytes())
            written.append(dest)
    return ScaffoldResult(root=root, name=name, package=package, files=sorted(written))
