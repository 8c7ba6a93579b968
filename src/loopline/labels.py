"""The target's type and classes, kept end to end: predictions, the prediction log, feedback, monitoring.

A model's label contract (:class:`LabelSpec`) is fixed when it is trained: the kind of the target
column in the features table (``int``, ``bool``, ``str``; ``float`` for regression), the classes
the estimator learned (in its ``classes_`` order), the positive class and decision threshold of a
binary classifier. It travels inside the logged model (``MLmodel`` metadata, key ``loopline``) so
every reader (batch, serving, the gate, monitoring) knows it without another registry call.

Values from the outside (a feedback label in JSON or CSV, an expert's label on the command line) are
parsed to that type at the edge by :meth:`LabelSpec.parse`: ``1``, ``1.0`` and ``"1"`` for an int
target; ``true``, ``"true"``, ``"True"``, ``1`` for a bool target. A label that is not one of the
model's classes is refused with the value and the known classes; nothing is ever stored as text
that was not text.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

LabelKind = Literal["int", "bool", "str", "float"]
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class LabelValueError(ValueError):
    """A label value that does not fit the model's label type or classes (the message names both)."""


def kind_of_arrow(typ: pa.DataType, task: str) -> LabelKind:
    """The label kind of a target column's Arrow type (regression targets are always float)."""
    import pyarrow as pa

    if task == "regression":
        return "float"
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_integer(typ):
        return "int"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "float"
    return "str"


def arrow_type(kind: LabelKind) -> pa.DataType:
    import pyarrow as pa

    return {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string(), "float": pa.float64()}[kind]


def py_value(value: Any, kind: LabelKind) -> Any:
    """A label (numpy scalar, python value) as the plain python value of ``kind``."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    if kind == "float":
        return float(value)
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class LabelSpec:
    """What a model predicts: the task, the label kind and (classifiers) classes, positive class, threshold."""

    task: str
    kind: LabelKind
    classes: tuple[Any, ...] = ()
    positive: Any = None
    threshold: float | None = None
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------ shape
    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    @property
    def binary(self) -> bool:
        return self.is_classifier and len(self.classes) == 2

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type(self.kind)

    def positive_index(self) -> int:
        """Column of the positive class in ``predict_proba`` (binary), else -1."""
        if not self.binary:
            return -1
        return list(self.classes).index(self.positive) if self.positive in self.classes else 1

    # ------------------------------------------------------------------ decisions
    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Labels from class probabilities: the threshold on the positive class (binary), else the argmax.

        Mirrors scikit-learn (``predict`` is ``classes_[argmax]``; ``FixedThresholdClassifier`` is
        ``positive if score >= threshold``), so a model's own predict and this agree."""
        import numpy as np

        classes = self.class_array()
        if self.binary and self.threshold is not None:
            pos = self.positive_index()
            hit = proba[:, pos] >= self.threshold
            return classes[np.where(hit, pos, 1 - pos)]  # indexing keeps the classes' dtype (text stays objects)
        return classes[np.argmax(proba, axis=1)]

    def score(self, labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """The one probability per row kept beside the label: P(positive) for a binary model, P(label) else."""
        import numpy as np

        if self.binary:
            return np.asarray(proba[:, self.positive_index()], dtype=np.float64)
        cols = self.class_index(labels)
        out = np.full(len(labels), np.nan)
        ok = cols >= 0
        out[ok] = proba[np.nonzero(ok)[0], cols[ok]]
        return out

    @functools.cached_property
    def _columns(self) -> dict[Any, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def class_index(self, labels: np.ndarray) -> np.ndarray:
        """The column of each label in ``classes`` (-1 for a label that is not a class)."""
        import numpy as np

        if len(labels) <= 64:  # a request's few rows: a dict lookup beats sorting
            cols = self._columns
            return np.fromiter((cols.get(py_value(v, self.kind), -1) for v in labels), np.intp, len(labels))
        classes = self.class_array()
        values = np.asarray(labels, dtype=classes.dtype) if self.kind != "str" else np.asarray(labels, dtype=object)
        order = np.argsort(classes, kind="stable")
        ranked = classes[order]
        pos = np.clip(np.searchsorted(ranked, values), 0, len(ranked) - 1)
        found = ranked[pos] == values
        return np.where(found, order[pos], -1).astype(np.intp)

    def class_array(self) -> np.ndarray:
        import numpy as np

        if self.kind == "int":
            return np.asarray(self.classes, dtype=np.int64)
        if self.kind == "bool":
            return np.asarray(self.classes, dtype=np.bool_)
        if self.kind == "float":
            return np.asarray(self.classes, dtype=np.float64)
        return np.asarray(self.classes, dtype=object)

    # ------------------------------------------------------------------ values from outside
    def parse(self, value: Any) -> Any:
        """One label from JSON / CSV / the command line, as the target's type; LabelValueError if it cannot be."""
        if value is None:
            raise LabelValueError("a label is required, got null")
        kind = self.kind
        if kind == "float":
            out: Any = _as_float(value)
        elif kind == "int":
            out = _as_int(value)
        elif kind == "bool":
            out = _as_bool(value)
        else:
            out = _as_str(value)
        if self.classes and out not in self.classes:
            raise LabelValueError(
                f"{value!r} is not one of the model's classes {list(self.classes)} (label type {kind})"
            )
        return out

    def parse_many(self, values: Sequence[Any]) -> list[Any]:
        return [self.parse(v) for v in values]

    def describe(self) -> str:
        if not self.is_classifier:
            return "a number (regression)"
        text = f"one of {list(self.classes)} ({self.kind})" if self.classes else f"a {self.kind} label"
        return text

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "label_type": self.kind,
            "classes": list(self.classes),
            "positive_label": self.positive,
            "threshold": self.threshold,
            "target": self.target,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpec:
        kind: LabelKind = d.get("label_type") or ("float" if d.get("task") == "regression" else "str")
        classes = tuple(py_value(c, kind) for c in d.get("classes") or ())
        positive = d.get("positive_label")
        known = ("task", "label_type", "classes", "positive_label", "threshold", "target")
        return cls(
            task=str(d.get("task") or "regression"),
            kind=kind,
            classes=classes,
            positive=None if positive is None else py_value(positive, kind),
            threshold=None if d.get("threshold") is None else float(d["threshold"]),
            target=str(d.get("target") or ""),
            extra={k: v for k, v in d.items() if k not in known},
        )


def from_config(model: Any) -> LabelSpec:
    """What the config alone says (``model:`` section); classes and kind come from a trained model.

    Used for models logged without loopline's metadata: :func:`loopline.runtime.spec_of` completes it."""
    if model.task == "regression":
        return LabelSpec("regression", "float", target=model.target)
    return LabelSpec("classification", "str", (), model.positive_label, model.threshold, model.target)


def spec_for(
    task: str,
    kind: LabelKind,
    classes: Sequence[Any] = (),
    positive: Any = None,
    threshold: float | None = None,
    target: str = "",
    where: str = "model.positive_label",
) -> LabelSpec:
    """The label contract of a freshly fitted model; ``positive`` is parsed to the label type and must be a class."""
    if task == "regression":
        return LabelSpec(task, "float", target=target)
    typed = tuple(py_value(c, kind) for c in classes)
    spec = LabelSpec(task, kind, typed, target=target)
    pos = None
    if len(typed) == 2:
        if positive is None:
            pos = typed[1]  # scikit-learn's convention: the second class in sorted order
        else:
            try:
                pos = spec.parse(positive)
            except LabelValueError as exc:
                raise LabelValueError(f"{where}: {exc}") from None
    elif positive is not None and len(typed) > 2:
        raise LabelValueError(f"{where} is only for binary classification; the target has {len(typed)} classes")
    return LabelSpec(task, kind, typed, pos, threshold if len(typed) == 2 else None, target)


def _as_float(v: Any) -> float:
    if isinstance(v, bool):
        raise LabelValueError(f"{v!r} is a boolean, expected a number")
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise LabelValueError(f"{v!r} is not a number") from None
    else:
        raise LabelValueError(f"{v!r} is not a number")
    if not math.isfinite(f):
        raise LabelValueError(f"{v!r} is not a finite number")
    return f


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise LabelValueError(f"{v!r} is a boolean, expected an integer label")
    if isinstance(v, int):
        return v
    f = _as_float(v) if isinstance(v, (float, str)) else None
    if f is None:
        raise LabelValueError(f"{v!r} is not an integer label")
    if not f.is_integer():
        raise LabelValueError(f"{v!r} is not an integer label")
    return int(f)


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise LabelValueError(f"{v!r} is not a boolean label (true/false)")


def _as_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    raise LabelValueError(f"{v!r} is not a text label")


def map_type(spec: LabelSpec) -> pa.DataType:
    """``map<label, float64>``: the ``probabilities`` column of a classifier."""
    import pyarrow as pa

    return pa.map_(spec.arrow_type, pa.float64())


def output_arrays(spec: LabelSpec, predictions: np.ndarray, proba: np.ndarray | None) -> dict[str, pa.Array]:
    """The ``prediction`` column in the label's type and, for classifiers, ``probability`` (see
    :meth:`LabelSpec.score`) and ``probabilities`` (every class); nulls when the model gives no
    probabilities. The table contract of ``predictions`` and ``inference_log`` (docs/contracts.md)."""
    import numpy as np
    import pyarrow as pa

    n = len(predictions)
    if not spec.is_classifier:
        return {"prediction": pa.array(np.asarray(predictions, dtype=np.float64), pa.float64())}
    values = predictions.tolist() if predictions.dtype == object else predictions
    out = {"prediction": pa.array(values, spec.arrow_type)}
    if proba is None or not spec.classes:
        out["probability"] = pa.nulls(n, pa.float64())
        out["probabilities"] = pa.nulls(n, map_type(spec))
        return out
    k = len(spec.classes)
    out["probability"] = pa.array(spec.score(predictions, proba), pa.float64())
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    keys = pa.array(list(spec.classes) * n, spec.arrow_type)
    items = pa.array(np.ascontiguousarray(proba, dtype=np.float64).reshape(-1), pa.float64())
    out["probabilities"] = pa.MapArray.from_arrays(offsets, keys, items, type=map_type(spec))
    return out


def output_fields(spec: LabelSpec) -> list[pa.Field]:
    """The fields :func:`output_arrays` returns, in order."""
    import pyarrow as pa

    if not spec.is_classifier:
        return [pa.field("prediction", pa.float64())]
    return [
        pa.field("prediction", spec.arrow_type),
        pa.field("probability", pa.float64()),
        pa.field("probabilities", map_type(spec)),
    ]
