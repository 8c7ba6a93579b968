"""The served model: load ``<registered>@champion`` through the model runtime, and swap on promotion/rollback.

A :class:`LoadedModel` is immutable; the :class:`ModelHolder` points at one and a reload replaces
the pointer in one assignment, so a request that already picked a model finishes on it. A new
version is only swapped in after it loaded and predicted its own input example through the serving
path (the request parser's column conversion, then the runtime).

How a version predicts (a NumPy matrix into the estimator, optionally through Treelite; a DataFrame
into a pipeline; MLflow's pyfunc) is :mod:`loopline.runtime`'s choice, checked there against the
model's own predict; batch scoring, the gate and monitoring use the same runtime. Classifiers give
their labels in the target's own type, the class probabilities (``proba``, columns in the order of
``spec.classes``) and the one ``probability`` per row of :meth:`LabelSpec.score`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from loopline.labels import LabelSpec, py_value
from loopline.runtime import ModelRuntime, RuntimeLoadError
from loopline.serving.errors import InputError, ModelError, Unprocessable
from loopline.serving.schema import Signature

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.serving.metrics import Metrics
    from loopline.serving.protocols import Parsed

log = logging.getLogger("loopline.serving")


@dataclass(frozen=True)
class Prediction:
    """One request's predictions: ``labels`` (float64 for regression, the target's type for classifiers);
    for classifiers with probabilities ``proba`` (n, n_classes) and ``probability`` (n,)."""

    labels: np.ndarray
    proba: np.ndarray | None = None
    probability: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LoadedModel:
    runtime: ModelRuntime
    loaded_at: float
    classes_json: str = "[]"  # spec.classes as a JSON list (the V2 `probabilities` output's parameter)

    @property
    def name(self) -> str:  # registered model name
        return self.runtime.name

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def run_id(self) -> str:
        return self.runtime.run_id

    @property
    def signature(self) -> Signature:
        return self.runtime.signature

    @property
    def spec(self) -> LabelSpec:
        return self.runtime.spec

    @property
    def inline(self) -> bool:
        """Small requests predict on the event loop (a NumPy matrix into the estimator or Treelite)."""
        return self.runtime.path == "matrix"

    @property
    def has_proba(self) -> bool:
        """Whether predictions come with class probabilities (a classifier whose estimator gives them)."""
        rt = self.runtime
        return rt.spec.is_classifier and bool(rt.spec.classes) and rt.proba_estimator is not None

    def predict(self, parsed: Parsed) -> Prediction:
        """Predict on validated input; raises InputError when the model itself refuses the data."""
        rt = self.runtime
        params = parsed.params if rt.signature.has_params else None
        try:
            if parsed.raw_frame is not None:  # no column signature: the values as sent (pandas infers types)
                out = rt.predict(cast("dict[str, np.ndarray]", parsed.raw_frame), parsed.n, params)
            else:
                out = rt.predict(parsed.columns, parsed.n, params)
        except Exception as exc:
            raise _refused(exc) from None
        proba, spec = out.proba, rt.spec
        if proba is None or not spec.classes or proba.shape != (len(out.predictions), len(spec.classes)):
            return Prediction(out.predictions)
        if spec.binary or rt.path == "pyfunc":
            return Prediction(out.predictions, proba, spec.score(out.predictions, proba))
        # multiclass on the estimator's path: the label is the argmax class (LabelSpec.decide), so
        # LabelSpec.score's P(label) is the row's largest probability (without a lookup per row)
        return Prediction(out.predictions, proba, proba.max(axis=1))


def _refused(exc: Exception) -> Exception:
    """What a prediction failure means for the client: the model refused the input (4xx), or a bug (raised)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return InputError(f"the model refused the input: {exc.message}")
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return Unprocessable(f"the model cannot predict on this input: {exc}")
    return exc


def load_version(project: Project, version: str, run_id: str = "") -> LoadedModel:
    """Load one registered version and smoke-test it on its input example; ModelError on failure."""
    from loopline import labels, runtime
    from loopline.context import context

    uri = f"models:/{project.registered_model}/{version}"
    try:
        rt = runtime.load(
            uri,
            labels.from_config(project.config.model),
            name=project.registered_model,
            version=str(version),
            run_id=run_id,
            compile_trees=project.config.serving.compile_trees,
            ctx=context(project),
        )
    except RuntimeLoadError as exc:
        raise ModelError(str(exc)) from exc
    return _smoke_test(_loaded(rt))


def _loaded(rt: ModelRuntime) -> LoadedModel:
    return LoadedModel(rt, time.time(), json.dumps(list(rt.spec.classes)))


def _smoke_test(model: LoadedModel) -> LoadedModel:
    """Predict the input example through the serving path (request conversion, then the runtime) and
    compare with the model's own predict; a path that disagrees falls back to the pyfunc. Refuse on error."""
    from loopline.runtime import as_1d, example_frame
    from loopline.serving.protocols import Parsed
    from loopline.serving.schema import convert_columns

    try:
        df = example_frame(model.runtime)
        if model.signature.columns:
            raw = {c: df[c].tolist() for c in df.columns}
            parsed = Parsed(convert_columns(model.signature, raw, len(df)), len(df))
        else:
            parsed = Parsed({}, len(df), raw_frame={c: df[c].tolist() for c in df.columns})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            served = model.predict(parsed)
            if model.runtime.path != "pyfunc":
                reference = as_1d(model.runtime.pyfunc.predict(df), len(df))
                if not _same(reference, served.labels, model.spec):
                    path = model.runtime.path
                    log.warning("version %s: the %s path disagrees with pyfunc; using pyfunc", model.version, path)
                    rt = dataclasses.replace(model.runtime, path="pyfunc", estimator=None, compiled=False)
                    model = _loaded(rt)
                    served = model.predict(parsed)
    except InputError as exc:
        raise ModelError(f"version {model.version} failed its smoke test: {exc.message}") from None
    except Exception as exc:
        raise ModelError(f"version {model.version} failed its smoke test: {type(exc).__name__}: {exc}") from exc
    if len(served) != len(df):
        raise ModelError(f"version {model.version} returned {len(served)} predictions for {len(df)} example rows")
    return model


def _same(want: np.ndarray, got: np.ndarray, spec: LabelSpec) -> bool:
    if want.shape != got.shape:
        return False
    if not spec.is_classifier:
        try:
            return bool(np.allclose(want.astype(np.float64), got, rtol=1e-9, atol=1e-9, equal_nan=True))
        except (TypeError, ValueError):
            return False
    return [py_value(v, spec.kind) for v in want.tolist()] == [py_value(v, spec.kind) for v in got.tolist()]


class ModelHolder:
    """Holds the serving model; polls the champion alias and swaps atomically on change."""

    def __init__(
        self, project: Project, metrics: Metrics, log_check: Callable[[LoadedModel], None] | None = None
    ) -> None:
        self.project = project
        self.metrics = metrics
        self.log_check = log_check  # raises ModelError when the version's rows could not be logged
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._refused: str | None = None  # a version that failed; not retried until the alias moves again
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def champion_version(self) -> tuple[str, str] | None:
        from loopline import tracking

        mv = tracking.alias_version(self.project, tracking.CHAMPION)
        if mv is None:
            return None
        return str(mv.version), str(mv.run_id or "")

    def check(self) -> str:
        """Blocking: poll the alias once and load/swap if it moved; returns what happened."""
        try:
            found = self.champion_version()
        except Exception as exc:
            self.last_error = f"cannot read @champion of {self.project.registered_model}: {exc}"
            log.warning("%s", self.last_error)
            return "registry_error"
        if found is None:
            if self.current is None:
                self.last_error = (
                    f"registered model {self.project.registered_model!r} has no @champion; "
                    f"promote one (loopline promote --env {self.project.env})"
                )
            return "no_champion"
        version, run_id = found
        if self.current is not None and self.current.version == version:
            self._refused = None
            return "unchanged"
        if version == self._refused:
            return "refused_before"
        old = self.current.version if self.current else None
        try:
            model = load_version(self.project, version, run_id)
            if self.log_check is not None:
                self.log_check(model)
        except ModelError as exc:
            self._refused = version
            self.last_error = str(exc)
            self.metrics.reload(ok=False)
            log.error("not serving version %s (keeping %s): %s", version, old, exc)
            return "failed"
        self.current = model  # the atomic swap: in-flight requests keep their reference
        gc.freeze()  # the new model's objects join the startup heap, out of the cyclic collector's walks
        self._refused = None
        self.last_error = None
        self.metrics.reload(ok=True)
        self.metrics.model_info(model.name, model.version, model.run_id, old)
        rt = model.runtime
        how = f"{rt.path} path" + (", Treelite" if rt.compiled else "")
        log.info("serving %s version %s (was %s; %s)", model.name, model.version, old, how)
        return "swapped"

    async def check_async(self) -> str:
        async with self._lock:
            return await asyncio.to_thread(self.check)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_async()
            except Exception:  # never let the poller die
                log.exception("champion poll failed")

    def start(self, interval: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll(max(interval, 0.05)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
