"""Each shim over a third-party private API (loopline.compat) still works with the installed versions, and a
missing optional dependency names its `pip install "loopline[extra]"` line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from loopline import compat
from loopline.errors import ConfigError, MissingDependency


# ----------------------------------------------------------------------------- require
def test_require_imports_an_installed_module() -> None:
    assert compat.require("json") is json
    assert compat.require("treelite.sklearn", extra="fast").__name__ == "treelite.sklearn"


def test_require_names_the_extra_of_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ModuleNotFoundError
    with pytest.raises(MissingDependency, match="optuna is not installed") as info:
        compat.require("optuna")
    assert info.value.hint == 'pip install "loopline[tune]"'
    assert str(info.value).endswith('Hint: pip install "loopline[tune]"')


def test_require_names_an_explicit_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependency, match="httpx") as info:
        compat.require("httpx", extra="replay")
    assert info.value.hint == 'pip install "loopline[replay]"'


def test_missing_lightgbm_estimator_is_a_config_error_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopline.estimators import resolve_estimator

    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(ConfigError, match=r"'lightgbm.LGBMRegressor' needs lightgbm, which is not installed") as e:
        resolve_estimator("lightgbm.LGBMRegressor", "loopline.yaml")
    assert e.value.hint == 'pip install "loopline[lightgbm]"'


def test_missing_optuna_stops_a_search_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopline.training import _search

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingDependency, match="optuna is not installed"):
        _search(None, None, None, {}, [])  # type: ignore[arg-type]


def test_missing_treelite_keeps_the_estimators_own_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopline.treepredict import compile_trees

    X = np.random.default_rng(0).uniform(size=(200, 3))
    est = HistGradientBoostingRegressor(max_iter=5).fit(X, X[:, 0])
    assert compile_trees(est) is not None
    monkeypatch.setitem(sys.modules, "treelite.sklearn", None)
    assert compile_trees(est) is None


# ----------------------------------------------------------------------------- scikit-learn
def test_sklearn_param_problem_reports_what_fit_would_refuse() -> None:
    problem = compat.sklearn_param_problem(HistGradientBoostingRegressor, "max_iter", 0)
    assert problem is not None
    what, got = problem
    assert "int in the range [1, inf)" in what
    assert got == "0"


def test_sklearn_param_problem_accepts_valid_and_unknown_parameters() -> None:
    assert compat.sklearn_param_problem(HistGradientBoostingRegressor, "max_iter", 10) is None
    assert compat.sklearn_param_problem(HistGradientBoostingRegressor, "no_such_param", 1) is None

    class NoConstraints:
        def fit(self) -> None: ...

    assert compat.sklearn_param_problem(NoConstraints, "anything", object()) is None


# ----------------------------------------------------------------------------- Treelite
def test_gtil_predictor_uses_treelites_internals_and_matches_the_public_predict() -> None:
    import treelite.sklearn
    from treelite import gtil
    from treelite.gtil import gtil as internals

    assert hasattr(internals, "_predict_impl") and hasattr(internals, "GTILConfig")  # the internals are there
    X = np.random.default_rng(1).uniform(size=(300, 4))
    est = HistGradientBoostingRegressor(max_iter=10).fit(X, X @ [1.0, 2.0, 0.0, -1.0])
    model = treelite.sklearn.import_model(est)
    predict = compat.gtil_predictor(model, nthread=1)
    np.testing.assert_allclose(predict(X), gtil.predict(model, X, nthread=1))
    margins = compat.gtil_predictor(model, nthread=1, predict_type="raw")
    np.testing.assert_allclose(margins(X), gtil.predict(model, X, nthread=1, pred_margin=True))


# ----------------------------------------------------------------------------- MLflow
@pytest.mark.parametrize("version", [0, 3])
def test_delta_dataset_keeps_the_version_and_a_sampled_schema(version: int) -> None:
    df = pd.DataFrame({"x": np.arange(500, dtype=np.float64), "y": np.arange(500) % 2})
    ds = compat.delta_dataset(df, "/tmp/tables/features", version, "y", "features")
    assert ds.name == "features"
    assert json.loads(ds.source.to_json()) == {"path": "/tmp/tables/features", "delta_table_version": version}
    assert "schema" in ds.__dict__  # pre-filled, not inferred from the 500 rows
    assert [c.name for c in ds.schema.inputs] == ["x", "y"]
