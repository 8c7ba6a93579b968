"""Serving fixtures (helpers live in _serving.py): a session template project with a real MLflow
sqlite registry (v1, v2: sklearn; v3: a broken pyfunc), copied per test; a session template of
classifier projects (``classifier_template``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import ServerProc, start_server


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving-template")
    # build in a subprocess: mlflow's global tracking state stays out of the test process
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"from _serving import build_template; from pathlib import Path; "
        f"build_template(Path({str(root)!r}))"
    )
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.fixture(scope="session")
def classifier_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project per classifier of ``_serving.CLASSIFIERS``, trained by loopline and promoted (built once)."""
    root = tmp_path_factory.mktemp("classifier-template")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"from _serving import build_classifiers; from pathlib import Path; "
        f"build_classifiers(Path({str(root)!r}))"
    )
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "proj"
    shutil.copytree(template, dst)
    return dst


@pytest.fixture
def server(project: Path) -> Iterator[ServerProc]:
    srv = start_server(project)
    yield srv
    srv.stop()
