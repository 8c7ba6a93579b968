"""`loopline check`: validate a project and list every problem at once."""

from __future__ import annotations

import glob
import importlib
from pathlib import Path

from loopline.config import estimator_path, find_config, load_config
from loopline.errors import LooplineError


def check_project(start: Path | str | None = None) -> tuple[Path, list[str]]:
    """Return the config path and every problem found (empty = the project is valid)."""
    path = find_config(start)
    problems: list[str] = []
    try:
        cfg, first = load_config(path)
    except LooplineError as exc:
        return path, [exc.message]
    for env in cfg.environments:
        if env == first:
            continue
        try:
            load_config(path, env)
        except LooplineError as exc:
            problems.append(exc.message)

    from loopline.config import load_project
    from loopline.hooks import load_hook

    project = load_project(path, first)
    hooks = [("features.hook", cfg.features.hook), ("training.hook", cfg.training.hook)]
    hooks += [(f"contract.checks[{i}]", ref) for i, ref in enumerate(cfg.contract.checks)]
    for key, ref in hooks:
        if ref:
            try:
                load_hook(ref, f"{path.name}: {key}", project.root)
            except LooplineError as exc:
                problems.append(exc.message)
    estimator = estimator_path(cfg)
    if estimator:
        module, _, cls = estimator.rpartition(".")
        try:
            if not hasattr(importlib.import_module(module), cls):
                raise ImportError(f"no class {cls!r} in {module!r}")
        except ImportError as exc:
            problems.append(f"{path.name}: training.estimator {estimator!r} cannot be imported ({exc})")
    for name, src in cfg.sources.items():
        paths = [("path", src.path)] if src.path else []
        paths += [(f"files.{k}", v) for k, v in src.files.items()]
        for key, value in paths:
            assert value is not None
            try:
                resolved = project.resolve_path(value)
            except LooplineError as exc:
                problems.append(f"{path.name}: sources.{name}.{key}: {exc.message}")
                continue
            if "://" not in resolved and not glob.glob(resolved):
                problems.append(f"{path.name}: sources.{name}.{key}: {value!r} does not exist ({resolved})")
    return path, problems
