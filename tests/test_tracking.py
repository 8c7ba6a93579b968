"""tracking.load_model: MLflow's load with loopline's fast requirement check."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import sklearn

from loopline import tracking


def test_requirement_mismatches_names_each_unsatisfied_pin() -> None:
    have = sklearn.__version__
    lines = [
        "# a comment",
        "-r other.txt",
        f"scikit-learn=={have}",
        "numpy>=1.0  # inline comment",
        "scikit-learn==0.0.1",
        "no-such-package-loopline==1.0",
        "pandas==0.0.1; python_version < '3'",  # marker false here: not this environment's requirement
        "git+https://example.invalid/repo.git",  # not a version pin
    ]
    problems = tracking.requirement_mismatches(lines)
    assert problems == [
        f"the model requires scikit-learn==0.0.1, this environment has scikit-learn=={have}",
        "the model requires no-such-package-loopline==1.0, which is not installed",
    ]


def test_load_model_warns_on_mismatched_requirements(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import mlflow
    from sklearn.linear_model import LinearRegression

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    X = np.arange(20.0).reshape(10, 2)
    est = LinearRegression().fit(X, X.sum(axis=1))
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        mlflow.sklearn.log_model(
            est,
            name="model",
            pip_requirements=["scikit-learn==0.0.1", f"numpy=={np.__version__}"],
            registered_model_name="t.m",
            serialization_format="cloudpickle",
        )
    from typing import cast

    from loopline.config import Project
    from loopline.context import Context

    ctx = Context(cast(Project, None), mlflow.MlflowClient(uri, uri), uri, uri)  # a registry outside any project
    with caplog.at_level(logging.WARNING, logger="loopline.tracking"):
        model = tracking.load_model("models:/t.m/1", ctx)
    assert np.allclose(model.predict(X), X.sum(axis=1))
    warnings = [r.getMessage() for r in caplog.records if r.name == "loopline.tracking"]
    assert warnings == [
        f"models:/t.m/1: the model requires scikit-learn==0.0.1, this environment has "
        f"scikit-learn=={sklearn.__version__}"
    ]


@pytest.mark.parametrize("scheme", ["postgresql", "http"])
def test_every_mlflow_command_fails_fast_naming_an_unreachable_uri(project_dir: Path, scheme: str) -> None:
    """promote hung > 200 s on a dead server (MLflow retries for minutes): now <= 10 s and the URI is named."""
    import time

    from _support import free_port, run_cli

    port = free_port()  # nothing listens there
    uri = f"{scheme}://u:secret@127.0.0.1:{port}" + ("/mlflow" if scheme == "postgresql" else "")
    cfg = (project_dir / "loopline.yaml").read_text()
    (project_dir / "loopline.yaml").write_text(cfg.replace("  dev: {}", f"  dev: {{tracking_uri: '{uri}'}}"))
    shown = uri.replace("u:secret@", "u:***@")
    for command in (["promote"], ["run", "train"], ["run", "batch"]):
        t0 = time.monotonic()
        out = run_cli(*command, "--project", str(project_dir), timeout=60)
        took = time.monotonic() - t0
        assert out.returncode not in (0, 70), (command, out.stdout, out.stderr)
        assert f"cannot reach MLflow at tracking URI {shown}" in out.stderr, (command, out.stderr)
        assert "secret" not in out.stderr
        # the probe gives up after REACH_TIMEOUT_S (5 s); the rest is the CLI's own start (imports), which a
        # loaded CI box can stretch: MLflow's retries took > 200 s
        assert took < 30, (command, took)


def test_the_reachability_probe_gives_up_within_its_timeout() -> None:
    """A server that accepts connections and never answers (a hung tracking server) is unreachable in time."""
    import socket
    import time

    from loopline.tracking import _probe

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        for uri in (f"http://127.0.0.1:{port}", f"postgresql://u@127.0.0.1:{port}/db"):
            t0 = time.monotonic()
            assert _probe(uri, 1.0) is not None, uri
            assert time.monotonic() - t0 < 3, uri
