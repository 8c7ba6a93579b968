"""Tree ensembles predicted through Treelite's GTIL: one compiled call instead of one per tree.

scikit-learn's tree ensembles walk their trees one Python call at a time (a 100-tree
HistGradientBoosting model spends ~1 ms on one row, almost all of it per-tree overhead). Treelite
imports the fitted ensemble (scikit-learn's forests and boosters, LightGBM) and its General Tree
Inference Library predicts all trees in one C++ call, with the same thresholds and leaf values.

:func:`compile_trees` returns a :class:`TreePredictor` (a ``predict(X)`` that returns what the
estimator's own ``predict`` returns) or ``None`` when the estimator is not a supported ensemble.
:func:`agrees` checks it against the estimator on probe rows; callers use the compiled path only
after that check passed, so an unsupported detail (a loss, a categorical split, a library version)
can cost speed but never a different prediction.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from loopline.compat import gtil_predictor as _gtil_predictor

log = logging.getLogger("loopline.treepredict")

# scikit-learn's classic trees compare float32 features with float64 thresholds
_FLOAT32_INPUT = {
    "RandomForestRegressor",
    "RandomForestClassifier",
    "ExtraTreesRegressor",
    "ExtraTreesClassifier",
    "GradientBoostingRegressor",
    "GradientBoostingClassifier",
}
_SKLEARN = _FLOAT32_INPUT | {"HistGradientBoostingRegressor", "HistGradientBoostingClassifier"}
_LIGHTGBM = {"LGBMRegressor", "LGBMClassifier"}
TREE_ENSEMBLES = frozenset(_SKLEARN | _LIGHTGBM)


class TreePredictor:
    """``predict(X)`` for a float64 matrix, through one Treelite GTIL call (single-threaded by default)."""

    def __init__(self, model: Any, estimator: Any, float32_input: bool, nthread: int = 1) -> None:
        self.model = model
        self.classes = getattr(estimator, "classes_", None)
        self.float32_input = float32_input
        self.nthread = nthread
        self.n_features_in_ = int(model.num_feature)
        self._predict = _gtil_predictor(model, nthread)
        self._margins: Any = None
        self._link: Any = None
        n_classes = len(self.classes) if self.classes is not None else 0
        loss = getattr(estimator, "_loss", None)
        boosted = hasattr(loss, "predict_proba") or type(estimator).__name__ in _LIGHTGBM
        if n_classes > 2 and boosted:  # GTIL's softmax runs in float32: float64 margins and the model's own link
            self._margins = _gtil_predictor(model, nthread, "raw")
            self._link = getattr(loss, "predict_proba", None) or _softmax

    def _raw(self, X: np.ndarray) -> np.ndarray:
        X = self._prepared(X)
        out = np.asarray(self._predict(X))
        return out.reshape(len(X), -1)  # GTIL: (rows, targets, classes)

    def _prepared(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        return X.astype(np.float32).astype(np.float64) if self.float32_input else X

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.classes is None:
            out = self._raw(X)
            return out[:, 0] if out.shape[1] == 1 else out
        return np.asarray(self.classes)[np.argmax(self.predict_proba(X), axis=1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities in ``classes_`` order (classifiers only)."""
        if self.classes is None:
            raise AttributeError("predict_proba: not a classifier")
        if self._margins is not None:
            X = self._prepared(X)
            margins = np.asarray(self._margins(X)).reshape(len(X), -1)
            return np.asarray(self._link(margins), dtype=np.float64)
        return self._proba(self._raw(X))

    @staticmethod
    def _proba(out: np.ndarray) -> np.ndarray:
        # binary models give the probability of the second class; multiclass one per class
        if out.shape[1] == 1:
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out


def _softmax(margins: np.ndarray) -> np.ndarray:
    """LightGBM's multiclass link, in float64 (max subtracted first, as LightGBM does)."""
    e = np.exp(margins - margins.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compile_trees(estimator: Any, nthread: int = 1) -> TreePredictor | None:
    """A Treelite predictor for a supported fitted ensemble, else None (never raises)."""
    name = type(estimator).__name__
    if name not in _SKLEARN and name not in _LIGHTGBM:
        return None
    if name.endswith("Classifier") and getattr(estimator, "classes_", None) is None:
        return None
    try:
        from loopline.compat import require

        require("treelite.sklearn", extra="fast")  # not installed: logged below with its pip line
        import treelite
        import treelite.sklearn

        if name in _LIGHTGBM:
            model = treelite.frontend.from_lightgbm(estimator.booster_)
        else:
            model = treelite.sklearn.import_model(estimator)
    except Exception as exc:  # an unsupported loss, option or version: keep the estimator's own predict
        log.info("tree ensemble %s not compiled with Treelite: %s", name, exc)
        return None
    return TreePredictor(model, estimator, name in _FLOAT32_INPUT, nthread)


def probe_rows(example: np.ndarray, n: int = 512, seed: int = 0) -> np.ndarray:
    """The example rows plus ``n`` random rows spread over (and past) each column's observed range."""
    example = np.asarray(example, dtype=np.float64)
    rng = np.random.default_rng(seed)
    finite = np.where(np.isfinite(example), example, np.nan)
    lo = np.nan_to_num(np.nanmin(finite, axis=0), nan=0.0)
    hi = np.nan_to_num(np.nanmax(finite, axis=0), nan=1.0)
    pad = np.maximum(np.abs(hi - lo), np.maximum(np.abs(lo), np.abs(hi))) + 1.0
    rows = rng.uniform(lo - pad, hi + pad, size=(n, example.shape[1]))
    picks = rng.integers(0, len(example), size=n // 2)  # half of them near real rows
    rows[: n // 2] = example[picks] * rng.uniform(0.8, 1.2, size=(n // 2, example.shape[1]))
    return np.vstack([example, rows])


def agrees(predictor: TreePredictor, estimator: Any, X: np.ndarray) -> bool:
    """True when the compiled path returns what ``estimator.predict`` returns on ``X``."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = np.asarray(estimator.predict(X))
        got = predictor.predict(X)
    except Exception as exc:
        log.info("Treelite check failed: %s", exc)
        return False
    if want.shape != got.shape:
        return False
    if want.dtype.kind in "fc":
        same = bool(np.allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True))
    else:
        same = bool(np.array_equal(got, want))
    if same and predictor.classes is not None and hasattr(estimator, "predict_proba"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want_p = np.asarray(estimator.predict_proba(X), dtype=np.float64)
            got_p = predictor.predict_proba(X)
        except Exception as exc:
            log.info("Treelite probability check failed: %s", exc)
            return False
        same = want_p.shape == got_p.shape and bool(np.allclose(got_p, want_p, rtol=1e-9, atol=1e-12))
    return same
