"""The public surface of ``import loopline``: pinned, importable, cheap to import; the example script runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import loopline

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_pinned() -> None:
    assert loopline.__all__ == [
        "Environment",
        "LooplineConfig",
        "LooplineError",
        "Project",
        "__version__",
        "load_project",
        "open",
    ]


def test_every_public_name_is_importable() -> None:
    for name in loopline.__all__:
        assert getattr(loopline, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from loopline import *", namespace)
    assert set(loopline.__all__) <= set(namespace)
    assert callable(loopline.open) and isinstance(loopline.Environment, type)
    assert set(loopline.__all__) <= set(dir(loopline))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'loopline' has no attribute 'nope'"):
        loopline.nope  # noqa: B018


def test_import_and_open_stay_light() -> None:
    """`import loopline` and resolving `loopline.open` load no pandas, MLflow or pydantic (CLI startup)."""
    code = (
        "import sys, loopline; loopline.open; loopline.Environment\n"
        "print(','.join(m for m in ('pandas', 'mlflow', 'pydantic', 'sklearn', 'duckdb') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_python_api_example_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train: version 1" in out.stdout and "gate passed" in out.stdout
    assert "batch: 10000 rows scored by v1" in out.stdout
    assert "monitor: ok" in out.stdout
    assert "status: champion v1, last runs: ingest ok, train ok, batch ok, monitor ok" in out.stdout
