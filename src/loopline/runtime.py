"""One model runtime for batch scoring, serving, the gate and monitoring: load a registered version,
know its inputs and label contract, predict labels *and* class probabilities the same way everywhere.

:func:`load` returns a :class:`ModelRuntime`. Its :meth:`~ModelRuntime.predict` takes typed columns
(the signature's columns as NumPy arrays) and returns an :class:`Output`: the predictions (float64
for regression; the target's own type for classifiers) and, for classifiers with probabilities, the
``(n, n_classes)`` matrix in the order of :attr:`LabelSpec.classes`.

Paths, chosen once at load and checked there against the model's own ``predict`` (MLflow pyfunc) on
its input example and probe rows around it; a path that disagrees is not used:

* **matrix**: a scikit-learn/LightGBM estimator whose inputs are all numeric predicts on a float64
  matrix (what it would convert a DataFrame to), optionally through Treelite (one C++ call for all
  trees). The pipeline ``loopline run train`` logs for text inputs (OrdinalEncoder + passthrough,
  then the model) takes this path too: :mod:`loopline.encoded` builds the matrix its model reads
  (category codes through Arrow) and its last step predicts it. Classifier labels come from the
  probabilities (:meth:`LabelSpec.decide`: argmax, or the binary threshold), so one call gives both.
* **frame**: an estimator that needs named columns (another pipeline with a categorical encoder) gets a
  DataFrame, skipping MLflow's schema pass (callers have checked the columns already).
* **pyfunc**: anything else goes through ``PyFuncModel.predict``; probabilities come from the raw
  estimator when it has ``predict_proba``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from loopline.labels import LabelKind, LabelSpec, py_value
from loopline.serving.schema import Signature

if TYPE_CHECKING:
    import pandas as pd

    from loopline.context import Context
    from loopline.encoded import EncodedMatrix

log = logging.getLogger("loopline.runtime")
warnings.filterwarnings("ignore", message="X does not have valid feature names")
METADATA_KEY = "loopline"
Path_ = Literal["matrix", "frame", "pyfunc"]


class RuntimeLoadError(Exception):
    """A model version could not be loaded."""


class OutputShapeError(TypeError):
    """The model returned predictions of another shape than one per row."""

    def __init__(self, got: tuple[int, ...], n: int, detail: str = "") -> None:
        super().__init__(detail or f"the model returned predictions of shape {got} for {n} rows; expected ({n},)")
        self.got, self.n = got, n


class NonNumericOutput(TypeError):
    """A regression model returned predictions that are not numbers."""


@dataclass(frozen=True)
class Output:
    """Predictions of ``n`` rows, and class probabilities (classifiers that give them)."""

    predictions: np.ndarray
    proba: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predictions)


@dataclass(frozen=True)
class ModelRuntime:
    name: str
    version: str
    run_id: str
    pyfunc: Any
    signature: Signature
    spec: LabelSpec
    path: Path_ = "pyfunc"
    estimator: Any = None  # what the matrix / frame path calls
    proba_estimator: Any = None  # predict_proba on the pyfunc path
    compiled: bool = False
    encoder: EncodedMatrix | None = None  # matrix path of a categorical-input pipeline: columns -> its model's X
    order: Literal["C", "F"] = "F"  # of the matrix: C for trees, F (as pandas gives) keeps linear models' BLAS sums

    # ------------------------------------------------------------------ predict
    @property
    def fast(self) -> bool:
        return self.path == "matrix"

    def predict(self, columns: dict[str, np.ndarray], n: int, params: dict[str, Any] | None = None) -> Output:
        """Predict typed signature columns (``params`` forces the pyfunc path, which alone takes them)."""
        if self.path == "matrix" and params is None and self.encoder is not None:
            return self._from_estimator(self.encoder.matrix(columns, n, self.order))
        if self.path == "matrix" and params is None:
            X = np.empty((n, len(self.signature.columns)), dtype=np.float64, order=self.order)
            for j, c in enumerate(self.signature.columns):
                X[:, j] = columns[c.name]
            return self._from_estimator(X)
        frame = self._frame(columns, n)
        if self.path == "frame" and params is None:
            return self._from_estimator(frame)
        return self._pyfunc(frame, params)

    def predict_frame(self, df: pd.DataFrame) -> Output:
        """Predict a DataFrame holding (at least) the model's input columns."""
        if self.signature.columns:
            cols = {c.name: df[c.name].to_numpy() for c in self.signature.columns if c.name in df.columns}
            if self.path == "matrix" and len(cols) == len(self.signature.columns):
                return self.predict(cols, len(df))
            if self.path == "frame":
                return self._from_estimator(df[[c.name for c in self.signature.columns if c.name in df.columns]])
        return self._pyfunc(df, None)

    def _from_estimator(self, X: Any) -> Output:
        est = self.estimator
        if not self.spec.is_classifier:
            return Output(np.asarray(est.predict(X), dtype=np.float64).reshape(-1))
        proba = np.asarray(est.predict_proba(X), dtype=np.float64)
        return Output(self.spec.decide(proba), proba)

    def _pyfunc(self, frame: pd.DataFrame, params: dict[str, Any] | None) -> Output:
        out = self.pyfunc.predict(frame, params=params) if params is not None else self.pyfunc.predict(frame)
        preds = as_1d(out, len(frame))
        if not self.spec.is_classifier:
            try:
                return Output(preds.astype(np.float64))
            except (TypeError, ValueError):
                raise NonNumericOutput(f"the model returned non-numeric predictions (dtype {preds.dtype})") from None
        labels = typed_labels(preds, self.spec)
        proba = None
        if self.proba_estimator is not None:
            try:
                cols = [c.name for c in self.signature.columns] or list(frame.columns)
                proba = np.asarray(self.proba_estimator.predict_proba(frame[cols]), dtype=np.float64)
            except Exception as exc:  # probabilities are extra: never fail a prediction for them
                log.debug("version %s: predict_proba failed: %s", self.version, exc)
        return Output(labels, proba)

    def _frame(self, columns: dict[str, np.ndarray], n: int) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({k: v for k, v in columns.items()}, index=pd.RangeIndex(n))


# ----------------------------------------------------------------------------- helpers
def as_1d(out: Any, n: int) -> np.ndarray:
    """A model's output as a 1-d array of ``n`` predictions; TypeError naming the shape otherwise."""
    if hasattr(out, "iloc") and getattr(out, "ndim", 1) == 2:
        if out.shape[1] != 1:
            detail = f"the model returned {out.shape[1]} columns {list(out.columns)}; expected one"
            raise OutputShapeError(tuple(out.shape), n, detail)
        out = out.iloc[:, 0]
    arr = np.asarray(out.to_numpy() if hasattr(out, "to_numpy") else out)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise OutputShapeError(tuple(arr.shape), n)
    return arr


def typed_labels(preds: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Classifier labels in the target's dtype (int64, bool, float64 or Python strings)."""
    kind = spec.kind
    if kind == "str":
        if preds.dtype == object and all(isinstance(v, str) for v in preds.tolist()[:64]):
            return preds
        return np.asarray([py_value(v, "str") for v in preds.tolist()], dtype=object)
    dtype = {"int": np.int64, "bool": np.bool_, "float": np.float64}[kind]
    return preds.astype(dtype)


def unwrap(model: Any) -> Any:
    """The scikit-learn estimator inside an MLflow sklearn wrapper."""
    return getattr(model, "sklearn_model", model)


def inner_estimator(est: Any) -> Any:
    """The fitted estimator under loopline's own threshold wrapper (FixedThresholdClassifier over a
    FrozenEstimator): Treelite compiles that one; the threshold is applied by the label spec."""
    name = type(est).__name__
    if name == "FixedThresholdClassifier":
        inner = getattr(est, "estimator_", None) or est.estimator
        return getattr(inner, "estimator", inner) if type(inner).__name__ == "FrozenEstimator" else inner
    return est


def spec_of(pyfunc: Any, fallback: LabelSpec) -> LabelSpec:
    """The label contract stored with the model, else ``fallback`` completed from the estimator's classes."""
    meta = getattr(pyfunc.metadata, "metadata", None) or {}
    stored = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if isinstance(stored, dict) and stored.get("task"):
        return LabelSpec.from_dict(stored)
    if not fallback.is_classifier or fallback.classes:
        return fallback
    try:
        classes = getattr(unwrap(pyfunc.get_raw_model()), "classes_", None)
    except Exception:
        classes = None
    if classes is None:
        return fallback
    from loopline.labels import spec_for

    arr = np.asarray(classes)
    kinds: dict[str, LabelKind] = {"b": "bool", "i": "int", "u": "int", "f": "float"}
    kind = kinds.get(arr.dtype.kind, "str")
    return spec_for("classification", kind, arr.tolist(), fallback.positive, fallback.threshold, fallback.target)


# ----------------------------------------------------------------------------- load
def load(
    uri: str,
    fallback: LabelSpec,
    *,
    name: str = "",
    version: str = "",
    run_id: str = "",
    compile_trees: bool = False,
    ctx: Context | None = None,
) -> ModelRuntime:
    """Load ``uri`` and pick the fastest path that agrees with the model's own predict; RuntimeLoadError if it fails.

    A ``models:/`` URI is resolved through ``ctx`` (the environment's Context, never MLflow's global URIs);
    without one ``uri`` is a local model folder."""
    from loopline import tracking

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyfunc = tracking.load_model(uri, ctx)
    except Exception as exc:  # anything mlflow/flavors raise: the caller decides what a broken version means
        raise RuntimeLoadError(f"{uri} failed to load: {type(exc).__name__}: {exc}") from exc
    rt = ModelRuntime(
        name=name,
        version=str(version),
        run_id=run_id or str(pyfunc.metadata.run_id or ""),
        pyfunc=pyfunc,
        signature=Signature.from_pyfunc(pyfunc),
        spec=spec_of(pyfunc, fallback),
    )
    return choose_path(rt, compile_trees)


def _raw(pyfunc: Any) -> Any | None:
    if "sklearn" not in (pyfunc.metadata.flavors or {}):
        return None
    try:
        return unwrap(pyfunc.get_raw_model())
    except Exception:
        return None


def choose_path(rt: ModelRuntime, compile_trees: bool = False) -> ModelRuntime:
    """The runtime on its fastest path that agrees with the model's own predict (see the module docstring)."""
    raw = _raw(rt.pyfunc)
    sig = rt.signature
    classifier = rt.spec.is_classifier
    proba_ok = classifier and raw is not None and _classes_match(raw, rt.spec)
    if raw is not None and classifier and not proba_ok:
        raw = None  # labels it cannot explain: only its own predict
    base = dataclasses.replace(rt, proba_estimator=raw if proba_ok else None)
    if raw is None or not hasattr(raw, "predict") or sig.has_params or not sig.columns:
        return base
    candidates: list[ModelRuntime] = []
    if sig.all_numeric and _takes_matrix(raw, sig):
        if compile_trees:
            from loopline.treepredict import compile_trees as compile_

            predictor = compile_(inner_estimator(raw))
            if predictor is not None:
                candidates.append(
                    dataclasses.replace(base, path="matrix", estimator=predictor, compiled=True, order="C")
                )
        candidates.append(dataclasses.replace(base, path="matrix", estimator=raw, order=_order(raw)))
    else:
        candidates += _encoded_candidates(base, raw, compile_trees)
        candidates.append(dataclasses.replace(base, path="frame", estimator=raw))
    for candidate in candidates:
        if _agrees(candidate):
            if candidate.compiled:
                log.info("version %s: tree ensemble compiled with Treelite", rt.version)
            return candidate
    return base


def _encoded_candidates(base: ModelRuntime, raw: Any, compile_trees: bool) -> list[ModelRuntime]:
    """Matrix paths for a categorical-input pipeline (its model, Treelite-compiled first when asked)."""
    from loopline.encoded import plan

    enc = plan(raw, base.signature.names)
    if enc is None:
        return []
    out = [dataclasses.replace(base, path="matrix", estimator=enc.model, encoder=enc, order=_order(enc.model))]
    if compile_trees:
        from loopline.treepredict import compile_trees as compile_

        predictor = compile_(inner_estimator(enc.model))
        if predictor is not None:
            out.insert(0, dataclasses.replace(out[0], estimator=predictor, compiled=True, order="C"))
    return out


def _order(est: Any) -> Literal["C", "F"]:
    """C (row-major) for tree ensembles, which read one row at a time (~6% fewer CPU seconds than from a
    Fortran-order matrix; the same predictions); F for the rest, which is what pandas hands a model (a
    linear model's BLAS sums then round exactly as on the pyfunc path)."""
    from loopline.treepredict import TREE_ENSEMBLES

    return "C" if type(inner_estimator(est)).__name__ in TREE_ENSEMBLES else "F"


def _classes_match(raw: Any, spec: LabelSpec) -> bool:
    classes = getattr(raw, "classes_", None)
    if classes is None or not hasattr(raw, "predict_proba"):
        return False
    try:
        return [py_value(c, spec.kind) for c in np.asarray(classes).tolist()] == list(spec.classes)
    except (TypeError, ValueError):
        return False


def _takes_matrix(raw: Any, sig: Signature) -> bool:
    names = getattr(raw, "feature_names_in_", None)
    if names is not None and list(names) != sig.names:
        return False
    if type(raw).__name__ in ("Pipeline", "ColumnTransformer"):
        return False
    return int(getattr(raw, "n_features_in_", len(sig.columns))) == len(sig.columns)


# ----------------------------------------------------------------------------- verification
def example_frame(rt: ModelRuntime) -> pd.DataFrame:
    """The model's input example, else one row of zeros per signature column."""
    import pandas as pd

    try:
        example = rt.pyfunc.input_example
    except Exception:
        example = None
    if isinstance(example, pd.DataFrame) and len(example):
        return example
    if isinstance(example, dict):
        try:
            return pd.DataFrame(example)
        except ValueError:
            pass
    if not rt.signature.columns:
        raise RuntimeLoadError(f"version {rt.version} has neither an input example nor a column signature to check")
    zeros = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": ""}
    return pd.DataFrame({c.name: [zeros.get(c.kind)] for c in rt.signature.columns})


def probe_frame(rt: ModelRuntime, example: pd.DataFrame) -> pd.DataFrame:
    """The example plus random rows around it (numeric signatures), in the signature's dtypes."""
    import pandas as pd

    if rt.path != "matrix":
        return example
    from loopline.treepredict import probe_rows

    text = rt.encoder.text if rt.encoder is not None else frozenset()
    numeric = [c for c in rt.signature.columns if c.name not in text]
    X = example[[c.name for c in numeric]].to_numpy(dtype=np.float64)
    rows = probe_rows(X, n=256)
    out: dict[str, Any] = {}
    for c in rt.signature.columns:
        if c.name in text:
            out[c.name] = _text_probe(rt, c.name, example[c.name], len(rows))
            continue
        col = rows[:, numeric.index(c)]
        if c.kind in ("long", "integer"):
            col = np.round(np.nan_to_num(col))
        elif c.kind == "boolean":
            col = np.nan_to_num(col) > 0.5
        out[c.name] = col.astype(c.dtype)
    return pd.DataFrame(out)


def _text_probe(rt: ModelRuntime, name: str, example: Any, n: int) -> np.ndarray:
    """The example's values, then known categories, an unseen value and missing values at random."""
    assert rt.encoder is not None
    known = next(p.categories for p in rt.encoder.parts if p.name == name)
    pool = [*(known.to_pylist() if known is not None else []), "<unseen by the model>", None]
    rng = np.random.default_rng(1)
    head = list(example)[:n]
    tail = [pool[i] for i in rng.integers(0, len(pool), size=n - len(head))]
    return np.asarray(head + tail, dtype=object)


def _agrees(rt: ModelRuntime) -> bool:
    """True when ``rt``'s path gives the pyfunc's own predictions (and the estimator's probabilities) on the
    example and probe rows around it."""
    try:
        frame = probe_frame(rt, example_frame(rt))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = as_1d(rt.pyfunc.predict(frame), len(frame))
            got = rt.predict_frame(frame)
            if not _same(want, got.predictions, rt.spec):
                log.warning("version %s: the %s path disagrees with the model's own predict", rt.version, rt.path)
                return False
            if got.proba is not None and rt.proba_estimator is not None:
                cols = rt.signature.names
                ref = np.asarray(rt.proba_estimator.predict_proba(frame[cols]), dtype=np.float64)
                if ref.shape != got.proba.shape or not np.allclose(ref, got.proba, rtol=1e-9, atol=1e-12):
                    log.warning(
                        "version %s: the %s path's probabilities disagree with the model's", rt.version, rt.path
                    )
                    return False
    except Exception as exc:
        log.info("version %s: %s path not used (%s: %s)", rt.version, rt.path, type(exc).__name__, exc)
        return False
    return True


def _same(want: np.ndarray, got: np.ndarray, spec: LabelSpec) -> bool:
    if want.shape != got.shape:
        return False
    if not spec.is_classifier:
        try:
            return bool(np.allclose(want.astype(np.float64), got, rtol=1e-9, atol=1e-9, equal_nan=True))
        except (TypeError, ValueError):
            return False
    return [py_value(v, spec.kind) for v in want.tolist()] == [py_value(v, spec.kind) for v in got.tolist()]
