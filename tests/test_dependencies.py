"""Every third-party package src/loopline imports is declared in pyproject.toml; optional ones are extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from loopline.compat import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "loopline"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the files of src/loopline importing it (templates excluded)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if "templates" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "loopline" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_direct_import_is_declared() -> None:
    project = _pyproject()
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    dists = packages_distributions()
    optional_modules = set(EXTRAS)
    undeclared = {}
    for module, files in imported_modules().items():
        names = {_name(d) for d in dists.get(module, [module])}
        if module not in optional_modules and not names & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported by src/loopline but not in pyproject.toml: {undeclared}"


def test_optional_packages_are_extras_not_core() -> None:
    project = _pyproject()
    core = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    for module, (dist, extra) in EXTRAS.items():
        assert _name(dist) not in core, f"{dist} is optional (extra {extra!r}) but a core dependency"
        assert extra in extras, f"compat.EXTRAS names extra {extra!r} for {module}; pyproject has none"
        assert _name(dist) in {_name(r) for r in extras[extra]}, f"extra {extra!r} does not install {dist}"


def test_dev_extra_installs_every_optional_part() -> None:
    """`make install-dev` (``.[dev]``) must bring every extra the tests use."""
    dev = " ".join(_pyproject()["optional-dependencies"]["dev"])
    assert "loopline[all,spark]" in dev
    all_extra = _pyproject()["optional-dependencies"]["all"][0]
    for _dist, extra in EXTRAS.values():
        assert extra == "spark" or extra in all_extra, f"extra {extra!r} missing from loopline[all]"


def test_the_scan_sees_known_imports() -> None:
    """The AST walk itself works: it finds imports we know are there (so the tests above can fail)."""
    found = imported_modules()
    for module in ("pyarrow", "skops", "threadpoolctl", "packaging", "pyspark"):
        assert module in found, module
