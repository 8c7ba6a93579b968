"""Helpers shared by the training / gate / registry tests: a tmp project with a real features Delta table."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from loopline.config import Project, load_project
from loopline.tables import DeltaStore

BASE: dict[str, Any] = {
    "project": "demo",
    "model": {"name": "demo", "target": "y", "keys": ["id"], "time_column": "ts"},
    "training": {
        "estimator": "sklearn.ensemble.HistGradientBoostingRegressor",
        "params": {"max_iter": 15, "random_state": 0},
        "split": {"method": "time", "valid": 0.2, "test": 0.2},
    },
    "gate": {
        "thresholds": {"mae": {"max": 5.0}},
        "min_improvement": {"mae": {"relative": 0.01}},
        "prediction_range": [-50.0, 100.0],
    },
    "environments": {"dev": {}, "staging": {}, "prod": {}},
}

BROKEN_HOOKS = textwrap.dedent(
    """\
    import numpy as np


    class Raises:
        def predict(self, X):
            raise RuntimeError("boom: this model is broken")


    class WrongShape:
        def predict(self, X):
            return np.zeros((len(X), 2))


    def train_raises(train_df, valid_df, params):
        return Raises()


    def train_wrong_shape(train_df, valid_df, params):
        return WrongShape()


    def train_ok(train_df, valid_df, params):
        from sklearn.linear_model import LinearRegression

        cols = [c for c in train_df.columns if c.startswith("x")]
        return LinearRegression().fit(train_df[cols], train_df["y"])
    """
)


def features_table(n: int = 400, seed: int = 0, shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    y = 10 * x1 + 5 * x2 + rng.normal(0, 0.3, n) + shift
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "id": pa.array(np.arange(n), pa.int64()),
            "ts": pa.array([start + timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "y": y,
            "_batch_id": pa.array(["b1"] * n),
        }
    )


_TEMPLATE: list[Path] = []


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models and test sets: OpenMP threads only add start-up and contention (2-3x slower on a busy CI box)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def template_db() -> Path:
    """An empty, fully migrated MLflow sqlite database, made once per test process and copied per project
    (MLflow's alembic migrations cost seconds on every new database)."""
    if not _TEMPLATE:
        from mlflow import MlflowClient

        folder = tempfile.mkdtemp(prefix="loopline-mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "mlflow.db"
        c = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
        c.search_experiments()
        c.search_registered_models()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


def make_project(
    root: Path,
    overrides: dict[str, Any] | None = None,
    env: str = "dev",
    write_features: tuple[str, ...] = ("dev",),
    extra_files: dict[str, str] | None = None,
) -> Project:
    cfg = _merge(BASE, overrides or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "loopline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name, text in (extra_files or {}).items():
        (root / name).write_text(text)
    for e in cfg["environments"]:
        p = load_project(root, e)
        if p.tracking_uri == f"sqlite:///{p.state_dir / 'mlflow.db'}":
            p.state_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(template_db(), p.state_dir / "mlflow.db")
    for e in write_features:
        p = load_project(root, e)
        DeltaStore(p.storage_root, p.storage_options).overwrite("features", features_table(seed=sum(map(ord, e))))
    return load_project(root, env)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``b`` on ``a``; a None value removes the key (back to the config default)."""
    out = dict(a)
    for k, v in b.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
