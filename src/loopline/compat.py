"""Everything loopline borrows from other packages' private or internal APIs, in one place, plus :func:`require`.

A third-party upgrade that moves one of these breaks only this module, and tests/test_compat.py says which
shim broke. Every shim has a public fallback (or reports "not available") instead of failing a job:

* :func:`sklearn_param_problem` - scikit-learn's ``_parameter_constraints`` and
  ``sklearn.utils._param_validation`` (the messages ``fit`` would raise, known at config time);
* :func:`gtil_predictor` - Treelite's ``treelite.gtil.gtil._predict_impl`` / ``GTILConfig`` (the public
  ``gtil.predict`` parses a JSON config on every call);
* :func:`delta_dataset` - MLflow's ``DeltaDatasetSource`` (whose ``to_dict`` drops version 0) and the
  cached ``schema`` property of ``PandasDataset`` (pre-filled from a sample).

:func:`require` imports an optional dependency or raises :class:`~loopline.errors.MissingDependency` with
the exact ``pip install "loopline[extra]"`` line.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loopline.errors import MissingDependency

if TYPE_CHECKING:
    import pandas as pd

EXTRAS: dict[str, tuple[str, str]] = {
    "optuna": ("optuna", "tune"),
    "lightgbm": ("lightgbm", "lightgbm"),
    "treelite": ("treelite", "fast"),
    "psycopg": ("psycopg", "postgres"),
    "httpx": ("httpx", "replay"),
    "pyspark": ("pyspark", "spark"),
}
"""Import name of each optional dependency -> (distribution, the loopline extra that installs it)."""


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"optuna"`` or ``"treelite.sklearn"``); when it is not installed raise
    MissingDependency naming the package and ``pip install "loopline[extra]"``."""
    top = module.split(".")[0]
    dist, default_extra = EXTRAS.get(top, (top, top))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is missing: not ours to rename
        raise MissingDependency(dist, extra or default_extra) from None


# ----------------------------------------------------------------------------- scikit-learn
_CONSTRAINT_MESSAGE = re.compile(r"must be (.*)\. Got (.*) instead\.", re.S)


def sklearn_param_problem(cls: type, name: str, value: Any) -> tuple[str, str] | None:
    """``(what it must be, what it got)`` when scikit-learn's declared constraints refuse ``value`` for the
    parameter ``name`` of estimator class ``cls``; None when they accept it or when the class (or this
    scikit-learn) declares none."""
    constraints = getattr(cls, "_parameter_constraints", None)
    if not isinstance(constraints, dict) or name not in constraints:
        return None
    try:
        from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints
    except ImportError:
        return None
    try:
        validate_parameter_constraints({name: constraints[name]}, {name: value}, caller_name=cls.__name__)
    except InvalidParameterError as exc:
        m = _CONSTRAINT_MESSAGE.search(str(exc))
        return (m.group(1), m.group(2)) if m else (str(exc), repr(value))
    return None


# ----------------------------------------------------------------------------- Treelite
def gtil_predictor(model: Any, nthread: int, predict_type: str = "default") -> Any:
    """``gtil.predict(model, X, nthread=...)`` with its configuration parsed once: the public function
    serializes and parses a JSON config on every call (~10% of a one-row request). Falls back to the
    public function if Treelite's internals moved."""
    from treelite import gtil

    try:
        from treelite.gtil.gtil import GTILConfig, _predict_impl

        config = GTILConfig(nthread=nthread, predict_type=predict_type)
    except (ImportError, TypeError, AttributeError):
        return lambda X: gtil.predict(model, X, nthread=nthread, pred_margin=predict_type == "raw")
    return lambda X: _predict_impl(model, X, config=config)


# ----------------------------------------------------------------------------- MLflow
def delta_dataset(df: pd.DataFrame, uri: str, version: int, target: str, name: str) -> Any:
    """An MLflow dataset of ``df`` whose source is the Delta table ``uri`` at ``version`` (version 0 kept)."""
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    class _Source(DeltaDatasetSource):
        """DeltaDatasetSource that keeps version 0 (MLflow's to_dict drops a falsy version)."""

        def to_dict(self) -> dict[Any, Any]:
            d = super().to_dict()
            d["delta_table_version"] = self.delta_table_version
            return d

    source = _Source(path=uri, delta_table_version=version)
    dataset = from_pandas(df, source=source, name=name, targets=target)
    # MLflow infers the dataset schema value by value (~1 s per 20k rows x 20 columns); the columns are
    # typed by Delta, so a sample gives the same schema. Pre-fill the cached property.
    try:
        from mlflow.models import infer_signature

        dataset.__dict__["schema"] = infer_signature(df.head(100)).inputs
    except Exception:
        pass
    return dataset
