"""The served model: load ``<registered>@champion``, predict fast, and swap on promotion/rollback.

A :class:`LoadedModel` is immutable; the :class:`ModelHolder` points at one and a reload replaces
the pointer in one assignment, so a request that already picked a model finishes on it. A new
version is only swapped in after it loaded and predicted its own input example.

Fast path: for a scikit-learn model whose signature is all numeric/boolean columns in the order the
estimator was fitted with, ``predict`` runs on a float64 NumPy matrix (what sklearn converts a
DataFrame to anyway); the load-time smoke test checks the two paths agree, else the pyfunc path
(``PyFuncModel.predict`` on a DataFrame) is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loopline.serving.schema import InputError, Signature

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.serving.metrics import Metrics
    from loopline.serving.protocols import Parsed

log = logging.getLogger("loopline.serving")
warnings.filterwarnings("ignore", message="X does not have valid feature names")


class ModelError(Exception):
    """A model version could not be loaded or failed its smoke test."""


@dataclass(frozen=True)
class LoadedModel:
    name: str  # registered model name
    version: str
    run_id: str
    pyfunc: Any
    signature: Signature
    raw: Any | None  # the sklearn estimator when the numpy fast path is safe
    loaded_at: float

    def predict(self, parsed: Parsed) -> np.ndarray:
        """Predict on validated input; raises InputError when the model itself refuses the data."""
        if self.raw is not None and parsed.params is None:
            X = np.column_stack([parsed.columns[c.name].astype(np.float64, copy=False) for c in self.signature.columns])
            try:
                return np.asarray(self.raw.predict(X))
            except ValueError as exc:
                raise InputError(f"the model cannot predict on this input: {exc}", status=422) from None
        return self.predict_pyfunc(parsed)

    def predict_pyfunc(self, parsed: Parsed) -> np.ndarray:
        import pandas as pd
        from mlflow.exceptions import MlflowException

        if parsed.raw_frame is not None:
            df = pd.DataFrame(parsed.raw_frame)
        else:
            df = pd.DataFrame({k: v for k, v in parsed.columns.items()})
        try:
            if self.signature.has_params and parsed.params is not None:
                out = self.pyfunc.predict(df, params=parsed.params)
            else:
                out = self.pyfunc.predict(df)
        except MlflowException as exc:
            raise InputError(f"the model refused the input: {exc.message}", status=400) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"the model cannot predict on this input: {exc}", status=422) from None
        return _as_array(out)


def _as_array(out: Any) -> np.ndarray:
    if hasattr(out, "to_numpy"):
        arr = out.to_numpy()
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        return np.asarray(arr)
    return np.asarray(out)


def load_version(project: Project, version: str, run_id: str = "") -> LoadedModel:
    """Load one registered version and smoke-test it on its input example; ModelError on failure."""
    from loopline import tracking

    tracking.client(project)
    uri = f"models:/{project.registered_model}/{version}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyfunc = tracking.load_model(uri)
    except Exception as exc:  # anything mlflow/flavors raise: a broken version must not crash the server
        raise ModelError(f"{uri} failed to load: {type(exc).__name__}: {exc}") from exc
    sig = Signature.from_pyfunc(pyfunc)
    raw = _fast_model(pyfunc, sig)
    model = LoadedModel(
        name=project.registered_model,
        version=str(version),
        run_id=run_id or str(pyfunc.metadata.run_id or ""),
        pyfunc=pyfunc,
        signature=sig,
        raw=raw,
        loaded_at=time.time(),
    )
    if raw is not None and project.config.serving.compile_trees:
        model = _compiled(model)
    return _smoke_test(model)


def _compiled(model: LoadedModel) -> LoadedModel:
    """The model with its tree ensemble compiled by Treelite, when that predicts exactly as the
    estimator does on the input example and probe rows around it; else unchanged."""
    from loopline.treepredict import agrees, compile_trees, probe_rows

    predictor = compile_trees(model.raw)
    if predictor is None:
        return model
    try:
        frame = _example_frame(model)
        X = frame[model.signature.names].to_numpy(dtype=np.float64)
    except Exception as exc:  # no usable example: keep the estimator's own predict
        log.info("version %s: no numeric example to check the compiled trees on (%s)", model.version, exc)
        return model
    if not agrees(predictor, model.raw, probe_rows(X)):
        log.warning("version %s: compiled trees disagree with the model; using its own predict", model.version)
        return model
    log.info("version %s: tree ensemble compiled with Treelite", model.version)
    return dataclasses.replace(model, raw=predictor)


def _fast_model(pyfunc: Any, sig: Signature) -> Any | None:
    if "sklearn" not in (pyfunc.metadata.flavors or {}) or not sig.all_numeric or sig.has_params:
        return None
    try:
        raw = pyfunc.get_raw_model()
    except Exception:
        return None
    names = getattr(raw, "feature_names_in_", None)
    if names is not None and list(names) != sig.names:
        return None
    if getattr(raw, "n_features_in_", len(sig.columns)) != len(sig.columns) or not hasattr(raw, "predict"):
        return None
    return raw


def _example_frame(model: LoadedModel) -> Any:
    import pandas as pd

    example = None
    try:
        example = model.pyfunc.input_example
    except Exception:
        example = None
    if isinstance(example, pd.DataFrame) and len(example):
        return example
    if isinstance(example, dict):
        try:
            return pd.DataFrame(example)
        except ValueError:
            pass
    if not model.signature.columns:
        raise ModelError(f"version {model.version} has neither an input example nor a column signature to smoke-test")
    zeros = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": ""}
    return pd.DataFrame({c.name: [zeros.get(c.kind)] for c in model.signature.columns})


def _smoke_test(model: LoadedModel) -> LoadedModel:
    """Predict the input example through the serving path (and the pyfunc path); refuse on error."""
    from loopline.serving.protocols import Parsed
    from loopline.serving.schema import convert_columns

    try:
        df = _example_frame(model)
        if model.signature.columns:
            raw = {c: df[c].tolist() for c in df.columns}
            cols = convert_columns(model.signature, raw, len(df))
            parsed = Parsed(cols, len(df))
        else:
            parsed = Parsed({}, len(df), raw_frame={c: df[c].tolist() for c in df.columns})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            served = model.predict(parsed)
            if model.raw is not None:
                reference = _as_array(model.pyfunc.predict(df))
                if reference.shape != served.shape or not np.allclose(reference, served, equal_nan=True):
                    log.warning("version %s: fast path disagrees with pyfunc; using pyfunc", model.version)
                    model = dataclasses.replace(model, raw=None)
                    served = model.predict(parsed)
    except ModelError:
        raise
    except InputError as exc:
        raise ModelError(f"version {model.version} failed its smoke test: {exc.message}") from None
    except Exception as exc:
        raise ModelError(f"version {model.version} failed its smoke test: {type(exc).__name__}: {exc}") from exc
    if len(served) != len(df):
        raise ModelError(f"version {model.version} returned {len(served)} predictions for {len(df)} example rows")
    return model


class ModelHolder:
    """Holds the serving model; polls the champion alias and swaps atomically on change."""

    def __init__(self, project: Project, metrics: Metrics) -> None:
        self.project = project
        self.metrics = metrics
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
        log.info("serving %s version %s (was %s)", model.name, model.version, old)
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
