"""The matrix a categorical-input pipeline feeds its model, built from typed columns without pandas.

``loopline run train`` logs a model with text inputs as ``Pipeline([("encode", ColumnTransformer(
[OrdinalEncoder on the text columns, "passthrough" on the numbers])), ("model", estimator)])``
(:mod:`loopline.estimators`). Its own ``predict`` needs a DataFrame and encodes strings through
Python objects, one batch at a time. :func:`plan` reads the fitted pipeline once and returns an
:class:`EncodedMatrix`: each text column becomes its category codes through one Arrow ``index_in``
call (unseen values and nulls -> NaN, as the encoder was told), each number column is copied as
float64, in the order the ColumnTransformer outputs them. The runtime then predicts that matrix with
the pipeline's last step (threaded, like any numeric model), and checks the result against the
pipeline's own predict before using it (:func:`loopline.runtime.choose_path`).

Anything else (another transformer, an encoder that errors on unknown values or groups infrequent
ones, a sparse output) gives ``None``: the model keeps its own path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Part:
    """One matrix column: a number column copied, or a text column's codes in ``categories``."""

    name: str
    categories: pa.Array | None = None


class EncodedMatrix:
    """Typed input columns -> the float64 matrix the pipeline's model takes."""

    def __init__(self, parts: list[Part], model: Any) -> None:
        self.parts = parts
        self.model = model
        self.text = frozenset(p.name for p in parts if p.categories is not None)

    def matrix(self, columns: dict[str, Any], n: int, order: Literal["C", "F"] = "F") -> np.ndarray:
        X = np.empty((n, len(self.parts)), dtype=np.float64, order=order)
        for j, part in enumerate(self.parts):
            values = columns[part.name]
            if part.categories is None:
                X[:, j] = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values
                continue
            if not isinstance(values, pa.Array):
                values = pa.array(np.asarray(values, dtype=object), pa.string(), from_pandas=True)
            codes = pc.index_in(values, value_set=part.categories)  # null: unseen or missing
            X[:, j] = codes.to_numpy(zero_copy_only=False)  # nulls -> NaN (float64)
        return X


def plan(pipeline: Any, names: list[str]) -> EncodedMatrix | None:
    """The matrix plan of a fitted ``Pipeline([ColumnTransformer, model])`` over the signature ``names``."""
    steps = getattr(pipeline, "steps", None)
    if type(pipeline).__name__ != "Pipeline" or not steps or len(steps) != 2:
        return None
    ct, model = steps[0][1], steps[1][1]
    if type(ct).__name__ != "ColumnTransformer" or getattr(ct, "sparse_output_", False):
        return None
    if not hasattr(ct, "transformers_") or not hasattr(model, "predict"):
        return None
    parts: list[Part] = []
    for _, trans, cols in ct.transformers_:
        if isinstance(cols, str):
            cols = [cols]
        if trans == "drop" or (hasattr(cols, "__len__") and len(cols) == 0):
            continue
        if not all(isinstance(c, str) and c in names for c in cols):
            return None
        if trans == "passthrough" or _identity(trans):
            parts += [Part(c) for c in cols]
        elif type(trans).__name__ == "OrdinalEncoder" and _plain(trans):
            for c, cats in zip(cols, trans.categories_, strict=True):
                known = _categories(cats)
                if known is None:
                    return None
                parts.append(Part(c, known))
        else:
            return None
    if int(getattr(model, "n_features_in_", len(parts))) != len(parts):
        return None
    return EncodedMatrix(parts, model)


def _identity(trans: Any) -> bool:
    """A fitted ColumnTransformer's "passthrough" (an identity FunctionTransformer)."""
    return type(trans).__name__ == "FunctionTransformer" and trans.func is None


def _plain(enc: Any) -> bool:
    """An encoder whose unknown and missing values become NaN, without infrequent-category grouping."""
    nan = float("nan")
    unknown, missing = getattr(enc, "unknown_value", None), getattr(enc, "encoded_missing_value", nan)
    return (
        np.dtype(enc.dtype) == np.float64
        and enc.handle_unknown == "use_encoded_value"
        and isinstance(unknown, float)
        and math.isnan(unknown)
        and isinstance(missing, float)
        and math.isnan(missing)
        and getattr(enc, "infrequent_categories_", None) is None
        and getattr(enc, "_infrequent_enabled", False) is False
    )


def _categories(cats: np.ndarray) -> pa.Array | None:
    """The fitted categories as an Arrow string array (their index is the code); a missing value sorts
    last and is dropped (nulls are not looked up: they become NaN as the encoder was told)."""
    values = list(cats)
    if values and (values[-1] is None or (isinstance(values[-1], float) and math.isnan(values[-1]))):
        values = values[:-1]
    if not all(isinstance(v, str) for v in values):
        return None  # numbers encoded as categories: compare them as the encoder does, not here
    return pa.array(values, pa.string())
