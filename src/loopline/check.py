"""`loopline check`: validate a project and list every problem at once."""

from __future__ import annotations

import glob
import importlib
from pathlib import Path

from loopline.config import LooplineConfig, estimator_path, find_config, load_config
from loopline.errors import LooplineError


def check_project(start: Path | str | None = None) -> tuple[Path, list[str]]:
    """Return the config path and every problem found (empty = the project is valid)."""
    path = find_config(start)
    problems: list[str] = []
    try:
        cfg, first = load_config(path)
    except LooplineError as exc:
        return path, [exc.message]
    configs = [(path.name, cfg)]
    for env in cfg.environments:
        if env == first:
            continue
        try:
            env_cfg, _ = load_config(path, env)
        except LooplineError as exc:
            problems.append(exc.message)
            continue
        if cfg.environments[env].overrides:
            configs.append((f"{path.name} [environment {env}]", env_cfg))

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
    for label, env_cfg in configs:
        problems += _estimator_problems(env_cfg, label)
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
    return path, list(dict.fromkeys(problems))


def _estimator_problems(cfg: LooplineConfig, file: str) -> list[str]:
    """The estimator class imports and ``training.params`` fit it (scikit-learn's parameter constraints)."""
    from loopline.estimators import validate_params

    estimator = estimator_path(cfg)
    if not estimator:
        return []
    module, _, name = estimator.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
        if cls is None:
            raise ImportError(f"no class {name!r} in {module!r}")
    except ImportError as exc:
        return [f"{file}: training.estimator {estimator!r} cannot be imported ({exc})"]
    try:
        validate_params(cls, dict(cfg.training.params), file)
    except LooplineError as exc:
        return exc.message.splitlines()
    return []
