"""Serving fixtures: a real MLflow sqlite registry with trained versions, and a real uvicorn server.

A session-scoped template project holds three registered versions of ``prod.demo``:
v1 and v2 (scikit-learn HistGradientBoosting, different fits) and v3 (a models-from-code pyfunc
whose predict raises: a broken champion). Each test copies the template folder, so aliases and
tables are its own, and starts `loopline serve` on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]

PROJECT_YAML = textwrap.dedent(
    """\
    project: demo
    model:
      name: demo
      target: y
      keys: [email]
    serving:
      reload_interval: 0.3s
      max_body_bytes: 20000
      log:
        flush_rows: 200
        flush_interval: 0.3s
        redact: {email: hash}
    environments:
      prod: {}
    """
)

BROKEN_MODEL = textwrap.dedent(
    """\
    import mlflow.pyfunc
    from mlflow.models import set_model


    class Broken(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            raise RuntimeError("this model is broken")


    set_model(Broken())
    """
)


def _frame(seed: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = 300
    df = pd.DataFrame({"x": rng.uniform(0, 50, n), "n": rng.integers(0, 10, n), "flag": rng.integers(0, 2, n) == 1})
    y = 2 * df.x + df.n + 3 * df.flag + rng.normal(0, 0.1, n) + seed
    return df, y


def build_template(root: Path) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingRegressor

    from loopline import tracking
    from loopline.config import load_project

    (root / "loopline.yaml").write_text(PROJECT_YAML)
    project = load_project(root, "prod")
    tracking.client(project)
    exp = tracking.experiment_id(project)
    for seed in (1, 2):
        df, y = _frame(seed)
        est = HistGradientBoostingRegressor(max_iter=30).fit(df, y)
        with mlflow.start_run(experiment_id=exp):
            mlflow.sklearn.log_model(
                est,
                name="model",
                signature=infer_signature(df, est.predict(df)),
                input_example=df.head(3),
                pip_requirements=["scikit-learn"],
                skops_trusted_types=TRUSTED,
                registered_model_name=project.registered_model,
            )
    code = root / "broken_model.py"
    code.write_text(BROKEN_MODEL)
    df, _ = _frame(3)
    with mlflow.start_run(experiment_id=exp):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            signature=infer_signature(df, df.x.to_numpy()),
            input_example=df.head(2),
            pip_requirements=["mlflow"],
            registered_model_name=project.registered_model,
        )
    MlflowClient(project.tracking_uri).set_registered_model_alias(project.registered_model, "champion", "1")


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    url: str
    root: Path
    log_path: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return self.log_path.read_text()


def start_server(
    root: Path,
    *,
    env: dict[str, str] | None = None,
    workers: int = 1,
    wait_ready: bool = True,
    token: str | None = None,
) -> ServerProc:
    port = free_port()
    log_path = root / f"server-{port}.log"
    full_env = {
        **os.environ,
        "LOOPLINE_REDACT_SALT": "test-salt",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **(env or {}),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "loopline"),
            "serve",
            "--project",
            str(root),
            "--env",
            "prod",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=full_env,
        text=True,
    )
    srv = ServerProc(proc, f"http://127.0.0.1:{port}", root, log_path)
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = "/ready" if wait_ready else "/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{srv.output()}")
        try:
            if httpx.get(srv.url + path, headers=headers, timeout=1).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    srv.stop(signal.SIGKILL)
    raise AssertionError(f"server not ready within 60 s:\n{srv.output()}")


def set_champion(root: Path, version: str) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / '.loopline' / 'prod' / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias("prod.demo", "champion", version)


def log_rows(root: Path) -> int:
    from deltalake import DeltaTable

    path = root / ".loopline" / "prod" / "tables" / "inference_log"
    if not (path / "_delta_log").is_dir():
        return 0
    return int(DeltaTable(str(path)).to_pyarrow_table(columns=["request_id"]).num_rows)


def read_log(root: Path):  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    return DeltaTable(str(root / ".loopline" / "prod" / "tables" / "inference_log")).to_pyarrow_table()
