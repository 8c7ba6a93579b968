"""Treelite-compiled tree ensembles predict exactly what the fitted estimators predict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression

from loopline.treepredict import TreePredictor, agrees, compile_trees, probe_rows


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(0, 50, n), rng.integers(0, 10, n).astype(float), rng.normal(size=n)])
    y = 2 * X[:, 0] + X[:, 1] + np.sin(X[:, 2])
    return X, y


REGRESSORS: list[Any] = [
    HistGradientBoostingRegressor(max_iter=40, random_state=0),
    RandomForestRegressor(n_estimators=15, max_depth=8, random_state=0),
    ExtraTreesRegressor(n_estimators=10, random_state=0),
    LGBMRegressor(n_estimators=40, verbose=-1),
]
CLASSIFIERS: list[Any] = [
    HistGradientBoostingClassifier(max_iter=30, random_state=0),
    RandomForestClassifier(n_estimators=15, random_state=0),
    GradientBoostingClassifier(n_estimators=20, random_state=0),
    LGBMClassifier(n_estimators=30, verbose=-1),
]


@pytest.mark.parametrize("est", REGRESSORS, ids=lambda e: type(e).__name__)
def test_regressors_match(est: Any) -> None:
    X, y = _data()
    est.fit(X, y)
    tp = compile_trees(est)
    assert isinstance(tp, TreePredictor)
    X_new, _ = _data(400, seed=1)
    X_new[::17, 2] = np.nan  # missing values follow the trees' learned default direction
    if isinstance(est, (RandomForestRegressor, ExtraTreesRegressor)):
        X_new = np.nan_to_num(X_new)
    assert np.allclose(tp.predict(X_new), est.predict(X_new), rtol=1e-9, atol=1e-9)
    assert agrees(tp, est, probe_rows(X[:3]))


@pytest.mark.parametrize("labels", [["no", "yes"], ["a", "b", "c"]], ids=["binary", "multiclass"])
@pytest.mark.parametrize("est", CLASSIFIERS, ids=lambda e: type(e).__name__)
def test_classifiers_return_the_same_labels(est: Any, labels: list[str]) -> None:
    X, y = _data()
    classes = np.asarray(labels)[np.digitize(y, np.quantile(y, np.linspace(0, 1, len(labels) + 1)[1:-1]))]
    est.fit(X, classes)
    tp = compile_trees(est)
    assert tp is not None
    X_new, _ = _data(400, seed=2)
    got = tp.predict(X_new)
    assert got.dtype == est.predict(X_new).dtype
    assert np.array_equal(got, est.predict(X_new))
    # the probabilities too, to float64 rounding (multiclass boosters: float64 margins and the model's own link)
    assert np.allclose(tp.predict_proba(X_new), est.predict_proba(X_new), rtol=1e-9, atol=1e-12)
    assert agrees(tp, est, probe_rows(X[:3]))


def test_unsupported_estimators_are_not_compiled() -> None:
    X, y = _data()
    assert compile_trees(LinearRegression().fit(X, y)) is None
    assert compile_trees(HistGradientBoostingRegressor()) is None  # not fitted: treelite refuses, no raise


def test_agrees_catches_a_different_model() -> None:
    X, y = _data()
    a = HistGradientBoostingRegressor(max_iter=20).fit(X, y)
    b = HistGradientBoostingRegressor(max_iter=20).fit(X, y + 1.0)
    tp = compile_trees(a)
    assert tp is not None
    assert not agrees(tp, b, probe_rows(X[:3]))
    assert not agrees(tp, a, probe_rows(X[:3, :2]))  # wrong number of columns: a failure, not a crash


def test_probe_rows_spread_past_the_example() -> None:
    ex = np.array([[1.0, 10.0], [2.0, 20.0]])
    rows = probe_rows(ex, n=200)
    assert rows.shape == (202, 2)
    assert np.array_equal(rows[:2], ex)
    assert rows[:, 1].min() < 10 and rows[:, 1].max() > 20
