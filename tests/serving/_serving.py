"""Serving fixtures: a real MLflow sqlite registry with trained versions, and a real uvicorn server.

A session-scoped template project holds three registered versions of ``prod.demo``:
v1 and v2 (scikit-learn HistGradientBoosting, different fits) and v3 (a models-from-code pyfunc
whose predict raises: a broken champion). Each test copies the template folder, so aliases and
tables are its own, and starts `loopline serve` on a free loopback port.

A second session template (:func:`build_classifiers`) holds one project per classifier, each trained
by loopline's own ``train`` on a real features table (so the model carries its label contract and
loopline's wrappers) and promoted to ``@champion``: see :data:`CLASSIFIERS`.
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
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingRegressor

    from loopline import tracking
    from loopline.config import load_project

    (root / "loopline.yaml").write_text(PROJECT_YAML)
    project = load_project(root, "prod")
    exp = tracking.experiment_id(project)
    for seed in (1, 2):
        df, y = _frame(seed)
        est = HistGradientBoostingRegressor(max_iter=30).fit(df, y)
        with tracking.bound(project), mlflow.start_run(experiment_id=exp):
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
    with tracking.bound(project), mlflow.start_run(experiment_id=exp):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            signature=infer_signature(df, df.x.to_numpy()),
            input_example=df.head(2),
            pip_requirements=["mlflow"],
            registered_model_name=project.registered_model,
        )
    tracking.client(project).set_registered_model_alias(project.registered_model, "champion", "1")


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


def schemathesis_failures(url: str, max_examples: int = 30) -> list[str]:
    """Property-based requests generated from the server's OpenAPI document; the ones answered with a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def run(case) -> None:  # type: ignore[no-untyped-def]
            if case.path_parameters:  # aim at the served model, so bodies reach the parsers
                served = {"name": "prod.demo", "version": "1"}
                case.path_parameters = {
                    **case.path_parameters,
                    **{k: v for k, v in served.items() if k in case.path_parameters},
                }
            resp = case.call(base_url=url)
            if resp.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {resp.status_code}: {resp.text[:200]}")

        run()
    return failures


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


# ----------------------------------------------------------------------------- classifiers
@dataclass(frozen=True)
class Classifier:
    """One classifier project of the classifier template: what it is trained on and what it serves."""

    name: str
    kind: str  # the target's label kind: int, bool, str
    classes: tuple[object, ...]
    positive: object = None
    categorical: bool = False  # a string input column (the runtime's DataFrame path)
    model: tuple[tuple[str, object], ...] = ()  # extra model: settings
    training: tuple[tuple[str, object], ...] = ()  # extra training: settings
    v2_datatype: str = ""

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


CLASSIFIERS = (
    # binary, text labels, a decision threshold (FixedThresholdClassifier; Treelite underneath)
    Classifier(
        "str_binary", "str", ("no", "yes"), "yes", model=(("positive_label", "yes"), ("threshold", 0.4)),
        v2_datatype="BYTES",
    ),
    # binary, boolean labels, calibrated probabilities (CalibratedClassifierCV on the NumPy matrix path)
    Classifier("bool", "bool", (False, True), True, training=(("calibrate", "sigmoid"),), v2_datatype="BOOL"),
    # multiclass, integer labels that are not 0..k-1 (Treelite)
    Classifier("int_multi", "int", (1, 2, 5), v2_datatype="INT64"),
    # multiclass, text labels (one with a space and a slash), a categorical string input (the DataFrame path)
    Classifier("str_multi_cat", "str", ("a b/c", "beta", "gamma"), categorical=True, v2_datatype="BYTES"),
)  # fmt: skip


def classifier_rows(case: Classifier, n: int, seed: int):  # type: ignore[no-untyped-def]
    """Input rows of ``case`` (a pandas DataFrame in the model's column order) and their latent score."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.uniform(0, 10, n), "n": rng.integers(0, 10, n), "flag": rng.integers(0, 2, n) == 1})
    score = df.x + df.n / 3 + 2 * df.flag + rng.normal(0, 1, n)
    if case.categorical:
        df["city"] = rng.choice(["Oslo", "Rome", "Lima"], n).astype(object)
        score = score + np.where(df.city == "Rome", 3.0, 0.0)
    return df, score.to_numpy()


def _classifier_features(case: Classifier, n: int = 300):  # type: ignore[no-untyped-def]
    import numpy as np
    import pyarrow as pa

    df, s = classifier_rows(case, n, seed=7)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if case.kind == "str" and case.binary:
        y = pa.array(np.where(s > 6, "yes", "no").tolist(), pa.string())
    elif case.kind == "bool":
        y = pa.array(s > 6, pa.bool_())
    elif case.kind == "int":
        y = pa.array(np.select([s < 4, s < 8], [1, 2], 5).astype(np.int64), pa.int64())
    else:
        y = pa.array(np.select([s < 5, s < 9], ["a b/c", "beta"], "gamma").tolist(), pa.string())
    return table.append_column("id", pa.array(np.arange(n), pa.int64())).append_column("y", y)


def classifier_yaml(case: Classifier) -> str:
    import yaml

    cfg = {
        "project": "demo",
        "model": {"name": "demo", "task": "classification", "target": "y", "keys": ["id"], **dict(case.model)},
        "training": {"params": {"max_iter": 20, "random_state": 0}, **dict(case.training)},
        "serving": {
            "reload_interval": "0.3s",
            "log": {"flush_rows": 200, "flush_interval": "0.3s"},
        },
        "gate": {"prediction_range": [0.02, 0.98]},
        "environments": {"prod": {}},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def build_classifiers(root: Path) -> None:
    """One project per classifier under ``root/<name>``: features table, trained version 1 as @champion."""
    import shutil

    from mlflow import MlflowClient

    from loopline import tracking
    from loopline.config import load_project
    from loopline.tables import DeltaStore
    from loopline.training import train

    empty = root / "mlflow-empty.db"  # migrate one database, copy it per project (migrations cost seconds)
    MlflowClient(tracking_uri=f"sqlite:///{empty}", registry_uri=f"sqlite:///{empty}").search_registered_models()
    for case in CLASSIFIERS:
        folder = root / case.name
        folder.mkdir()
        (folder / "loopline.yaml").write_text(classifier_yaml(case))
        project = load_project(folder, "prod")
        project.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(empty, project.state_dir / "mlflow.db")
        DeltaStore(project.storage_root).overwrite("features", _classifier_features(case))
        result = train(project)
        assert result.label["classes"] == list(case.classes), result.label
        tracking.client(project).set_registered_model_alias(project.registered_model, "champion", "1")
