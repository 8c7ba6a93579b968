"""Built-in estimators: the class from ``training.estimator``, its parameters, categorical inputs, and
(classifiers) calibrated probabilities and the binary decision threshold.

What is logged is one scikit-learn object that batch, serving and MLflow users all call the same way:

* **categorical inputs** (string / category columns) are encoded inside the model: an
  ``OrdinalEncoder`` in a ``ColumnTransformer`` (unseen categories and nulls become NaN, which the
  tree ensembles route as missing; HistGradientBoosting treats the codes as native categories), or a
  ``OneHotEncoder(handle_unknown="ignore")`` for estimators that cannot take NaN. Serving and batch
  pass the raw strings.
* ``training.calibrate`` wraps the fitted classifier in ``CalibratedClassifierCV`` fitted on the
  validation rows (the classifier itself is frozen).
* ``model.threshold`` (or one chosen on the validation rows by ``gate.threshold``) wraps a binary
  classifier in scikit-learn's ``FixedThresholdClassifier``, so the model's own ``predict`` applies it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from loopline.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from loopline.config import ThresholdSearch
    from loopline.labels import LabelSpec


def resolve_estimator(path: str, file: str) -> type:
    module_name, _, cls_name = path.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        from loopline.compat import EXTRAS

        missing = (getattr(exc, "name", None) or "").split(".")[0]
        if isinstance(exc, ModuleNotFoundError) and missing in EXTRAS:
            dist, extra = EXTRAS[missing]
            raise ConfigError(
                f"{file}: training.estimator {path!r} needs {dist}, which is not installed",
                hint=f'pip install "loopline[{extra}]"',
            ) from None
        raise ConfigError(
            f"{file}: training.estimator {path!r} cannot be imported ({exc})",
            hint="give a class path like sklearn.ensemble.HistGradientBoostingRegressor or lightgbm.LGBMRegressor",
        ) from None
    if not isinstance(cls, type) or not hasattr(cls, "fit"):
        raise ConfigError(f"{file}: training.estimator {path!r} is not an estimator class (no fit method)")
    return cls


def validate_params(cls: type, params: dict[str, Any], file: str, key: str = "training.params") -> None:
    """Check params against the estimator's signature and scikit-learn's ``_parameter_constraints``."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    names = [p for p in sig.parameters if p != "self"]
    problems: list[str] = []
    if not accepts_any:
        valid = ", ".join(names)
        problems += [
            f"{file}: {key}.{k} is not a parameter of {cls.__name__} (got {k}: {v!r}; valid: {valid})"
            for k, v in params.items()
            if k not in names
        ]
    from loopline.compat import sklearn_param_problem

    for k, v in params.items():
        problem = sklearn_param_problem(cls, k, v)
        if problem is not None:
            problems.append(f"{file}: {key}.{k} must be {problem[0]}, got {problem[1]}")
    if problems:
        raise ConfigError("\n".join(problems), hint=f"parameters of {cls.__name__}: {', '.join(names)}")


# ----------------------------------------------------------------------------- categorical inputs
def categorical_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Input columns holding text or categories (booleans and numbers go in as they are)."""
    import pandas as pd

    out = []
    for c in columns:
        dtype = frame[c].dtype
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype) or dtype.kind == "O":
            out.append(c)
    return out


def _allows_nan(est: Any) -> bool:
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(est).input_tags.allow_nan)
    except Exception:
        return type(est).__module__.startswith("lightgbm")


def build(cls: type, params: dict[str, Any], categorical: list[str], columns: list[str]) -> Any:
    """The estimator with ``params``; with categorical inputs, a pipeline that encodes them first."""
    est = cls(**params)
    if not categorical:
        return est
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if _allows_nan(est):
        encoder: Any = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
        )
        native = "categorical_features" in est.get_params() and "categorical_features" not in params
        if native:  # HistGradientBoosting: the codes are categories, not numbers (they come first)
            est.set_params(categorical_features=list(range(len(categorical))))
    else:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    numeric = [c for c in columns if c not in categorical]
    encode = ColumnTransformer(
        [("categorical", encoder, categorical), ("numeric", "passthrough", numeric)],
        verbose_feature_names_out=False,
    )
    return Pipeline([("encode", encode), ("model", est)])


def takes_sample_weight(est: Any) -> bool:
    final = est.named_steps["model"] if hasattr(est, "named_steps") else est
    try:
        return "sample_weight" in inspect.signature(final.fit).parameters
    except (TypeError, ValueError):
        return False


def fit(est: Any, X: pd.DataFrame, y: Any, name: str, sample_weight: Any = None) -> Any:
    kwargs: dict[str, Any] = {}
    if sample_weight is not None:
        kwargs = {"model__sample_weight" if hasattr(est, "named_steps") else "sample_weight": sample_weight}
    try:
        est.fit(X, y, **kwargs)
    except Exception as exc:
        if _too_many_categories(est, exc):  # HGB's native categories are capped at max_bins
            est.named_steps["model"].set_params(categorical_features=None)
            return fit(est, X, y, name, sample_weight)
        raise TrainingError(f"{name}.fit raised {type(exc).__name__}: {exc}") from exc
    return est


def _too_many_categories(est: Any, exc: Exception) -> bool:
    steps = getattr(est, "named_steps", None)
    if not steps or "model" not in steps:
        return False
    model = steps["model"]
    return (
        "categorical_features" in model.get_params()
        and model.categorical_features is not None
        and ("cardinality" in str(exc) or "max_bins" in str(exc))
    )


# ----------------------------------------------------------------------------- probabilities and threshold
def calibrate(model: Any, X: pd.DataFrame, y: Any, method: str) -> Any:
    """The frozen classifier with its probabilities calibrated on (X, y)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    try:
        return CalibratedClassifierCV(FrozenEstimator(model), method=method).fit(X, y)
    except Exception as exc:
        raise TrainingError(
            f"training.calibrate {method}: calibrating on the validation rows failed ({type(exc).__name__}: {exc})",
            hint="calibration needs validation rows of every class; raise training.split.valid",
        ) from exc


def calibrate_refit(unfitted: Any, X: pd.DataFrame, y: Any, method: str) -> Any:
    """A classifier fit on all of (X, y) whose probabilities are calibrated on cross-validated predictions
    (``ensemble=False``: one model, the calibration learned without the rows it maps)."""
    from sklearn.calibration import CalibratedClassifierCV

    try:
        return CalibratedClassifierCV(unfitted, method=method, cv=3, ensemble=False).fit(X, y)
    except Exception as exc:
        raise TrainingError(
            f"training.calibrate {method}: calibrating the refit model failed ({type(exc).__name__}: {exc})"
        ) from exc


def choose_threshold(proba_pos: np.ndarray, y_pos: np.ndarray, search: ThresholdSearch) -> float | None:
    """The decision threshold on P(positive) that is best on the validation rows (None when one class only)."""
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    if y_pos.all() or not y_pos.any():
        return None
    if search.optimise == "f1":
        precision, recall, thresholds = precision_recall_curve(y_pos, proba_pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        best = float(thresholds[int(np.argmax(f1))])
    else:
        fpr, tpr, thresholds = roc_curve(y_pos, proba_pos, drop_intermediate=False)
        finite = np.isfinite(thresholds)
        fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
        if search.optimise == "youden":
            best = float(thresholds[int(np.argmax(tpr - fpr))])
        else:
            n_pos, n_neg = int(y_pos.sum()), int((~y_pos).sum())
            cost = search.cost.fp * fpr * n_neg + search.cost.fn * (1.0 - tpr) * n_pos
            best = float(thresholds[int(np.argmin(cost))])
    return float(min(max(best, 1e-6), 1.0 - 1e-6))


def with_threshold(model: Any, spec: LabelSpec, X: pd.DataFrame, y: Any) -> Any:
    """``model`` predicting the positive class when P(positive) >= ``spec.threshold``."""
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    wrapped = FixedThresholdClassifier(
        FrozenEstimator(model), threshold=spec.threshold, pos_label=spec.positive, response_method="predict_proba"
    )
    return wrapped.fit(X, y)
