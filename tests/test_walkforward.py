"""Walk-forward evaluation (gate.walk_forward): each fold of the newest held-out rows is predicted by a fit on
every row before it, and the gate judges the pooled predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from _lifecycle import features_table, make_project, one_thread  # noqa: F401  (fixture)
from loopline.errors import ConfigError
from loopline.tables import DeltaStore

pytestmark = pytest.mark.usefixtures("one_thread")

LINEAR = {"training": {"estimator": "sklearn.linear_model.LinearRegression", "params": None}}


def _drifting(n: int = 400) -> pa.Table:
    """The concept moves during the newest rows: y gains +8 over the last quarter, step by step."""
    t = features_table(n=n, seed=4)
    y = np.asarray(t.column("y"))
    y = y + np.where(np.arange(n) >= 300, (np.arange(n) - 300) // 25 * 2.0, 0.0)
    return t.set_column(t.schema.get_field_index("y"), "y", pa.array(y))


def test_each_fold_is_predicted_by_a_fit_on_every_row_before_it(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    from loopline.training import _Trainer
    from loopline.training_data import prepare
    from loopline.walkforward import walk_forward

    p = make_project(tmp_path, LINEAR)
    DeltaStore(p.storage_root).overwrite("features", _drifting())
    prep = prepare(p)
    trainer = _Trainer(p)
    spec = trainer.spec(prep)
    notes: list[str] = []
    out = walk_forward(trainer, prep, {}, spec, notes, 4)
    assert out is not None and len(out.predictions) == len(prep.test) == 80 and not notes
    cols = prep.input_columns
    before = pd.concat([prep.train, prep.valid], ignore_index=True)
    for k, idx in enumerate(np.array_split(np.arange(80), 4)):  # fold k: fit on train + valid + folds < k
        seen = pd.concat([before, prep.test.iloc[: idx[0]]], ignore_index=True)
        want = LinearRegression().fit(seen[cols], seen["y"]).predict(prep.test.iloc[idx][cols])
        assert np.allclose(out.predictions[idx], want), k
    # under drift the later origins know more: pooled error below one fit at the first origin
    one = LinearRegression().fit(before[cols], before["y"]).predict(prep.test[cols])
    y = prep.test["y"].to_numpy()
    assert np.abs(out.predictions - y).mean() < np.abs(one - y).mean()
    assert walk_forward(trainer, prep, {}, spec, notes, 500) is None and "500 folds" in notes[-1]


def test_the_gate_judges_walk_forward_predictions(tmp_path: Path) -> None:
    from loopline import tracking
    from loopline.training import train

    p = make_project(tmp_path, {**LINEAR, "gate": {"walk_forward": 3, "thresholds": None, "min_improvement": None}})
    DeltaStore(p.storage_root).overwrite("features", _drifting())
    r = train(p)
    assert r.gate.passed and "test_mae" in r.metrics
    tags = tracking.client(p).get_run(r.run_id).data.tags
    assert tags["loopline.walk_forward_folds"] == "3"


def test_walk_forward_needs_a_time_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gate.walk_forward needs training.split.method: time"):
        make_project(tmp_path, {"gate": {"walk_forward": 3}, "training": {"split": {"method": "random"}}})
    with pytest.raises(ConfigError, match=r"gate.walk_forward"):
        make_project(tmp_path / "b", {"gate": {"walk_forward": 1}})
