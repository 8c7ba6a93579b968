"""Importing user hooks given as ``package.module:function``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopline.errors import HookConfigError


def add_project_paths(root: Path) -> None:
    """Make the project's own packages importable (the project folder and its ``src/``)."""
    for p in (root / "src", root):
        s = str(p)
        if p.is_dir() and s not in sys.path:
            sys.path.insert(0, s)


def load_hook(ref: str, key: str, root: Path | None = None) -> Callable[..., Any]:
    """Import ``module:function``; errors name the config key, the module and what is missing."""
    if root is not None:
        add_project_paths(root)
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise HookConfigError(f"{key}: {ref!r} is not a `package.module:function` reference")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HookConfigError(
            f"{key}: cannot import module {module_name!r} ({exc})",
            hint="the module must be importable from the project folder, its src/ or the environment",
        ) from None
    except Exception as exc:
        raise HookConfigError(f"{key}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise HookConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise HookConfigError(f"{key}: {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]
