"""The data plane: what one worker process serves, without HTTP.

:class:`DataPlane` holds the project, the model holder (``@champion``, reloaded when the alias moves),
the prediction log, the metrics and the bearer tokens, and does the work behind every endpoint:
predict (MLflow scoring and Open Inference V2 payloads), log the predictions, store feedback, report
readiness, reload. It takes bytes and returns plain values; refusals are
:class:`~loopline.errors.ServingError` subclasses carrying their HTTP status. The routers in
``loopline.serving.routes`` are the only code that knows about requests and responses (as MLServer
splits its REST layer from its ``DataPlane``), so this class is tested without a server.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from anyio import to_thread

from loopline import __version__
from loopline.config import Project
from loopline.errors import ServingError
from loopline.serving.auth import Auth
from loopline.serving.errors import ModelError, NotFound, NotReady, Unprocessable
from loopline.serving.logger import TABLE as LOG_TABLE
from loopline.serving.logger import Entry, PredictionLogger, log_conflict_message, spill_path
from loopline.serving.metrics import Metrics
from loopline.serving.model import LoadedModel, ModelHolder, Prediction
from loopline.serving.protocol_v2 import (
    KIND_TO_V2,
    encode_v2,
    output_metadata,
    output_names,
    output_tensors,
    parse_v2,
    select_outputs,
)
from loopline.serving.protocols import Parsed, encode_predictions, parse_mlflow
from loopline.serving.schema import event_times
from loopline.tables import DeltaStore

log = logging.getLogger("loopline.serving")
INLINE_ROWS = 64  # small fast-path batches predict on the event loop; bigger ones in the threadpool


def request_ids(n: int) -> list[str]:
    base = os.urandom(12).hex()
    return [f"{base}-{i}" for i in range(n)]


class DataPlane:
    """Everything one worker process holds: project, model holder, log buffer, metrics, auth."""

    def __init__(self, project: Project) -> None:
        cfg = project.config
        self.project = project
        self.serving = cfg.serving
        self.task = cfg.model.task
        self.keys = tuple(cfg.model.keys)
        self.time_column = cfg.model.time_column
        # columns logged beside the inputs when a request sends them: the keys and the event time
        self.passthrough = tuple(dict.fromkeys([*self.keys, *([self.time_column] if self.time_column else [])]))
        self.metrics = Metrics(cfg.gate.prediction_range, cfg.model.task)
        self.auth = Auth(cfg.serving.auth.tokens_env)
        self.store = DeltaStore(project.storage_root, project.storage_options)
        self.logger: PredictionLogger | None = None
        if cfg.serving.log.enabled:
            self.logger = PredictionLogger(self.store, cfg.serving.log, self.task, spill_path(project), self.metrics)
        self.holder = ModelHolder(project, self.metrics, log_check=self._log_check if self.logger else None)
        self.names = {project.registered_model, cfg.model.name}
        self.feedback_schema: Any = None  # cached schema of the feedback table
        self._monitoring_at = float("-inf")

    def _log_check(self, model: LoadedModel) -> None:
        """A version whose inputs ``inference_log`` cannot store is not served: every one of its predictions
        would be set aside in ``spill/rejected/`` and monitoring would see none of them."""
        assert self.logger is not None
        problems = self.logger.conflicts({c.name: c.kind for c in model.signature.columns})
        if problems:
            raise ModelError(
                f"version {model.version}'s predictions cannot be logged: {'; '.join(problems)}. Move the old "
                f"table aside ({LOG_TABLE} in {self.project.storage_root}) or log under another column name"
            )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the prediction log and load the champion (starting not ready without one)."""
        if self.logger is not None:
            problems = self.logger.conflicts()  # `loopline serve` said so before starting; this is uvicorn's way
            if problems:
                log.error("refusing to start: %s", log_conflict_message(problems))
                raise ServingError(log_conflict_message(problems))
            await self.logger.start()
        result = await self.holder.check_async()
        if self.holder.current is None:
            log.warning("starting NOT READY (%s): %s", result, self.holder.last_error)
        self.holder.start(self.serving.reload_interval.total_seconds())

    async def stop(self) -> None:
        """Stop polling the alias and commit what the log holds."""
        await self.holder.stop()
        if self.logger is not None:
            await self.logger.close()
            log.info(
                "prediction log closed (%d rows committed, %d staged by this worker)",
                self.logger.rows_flushed,
                self.logger.rows_staged,
            )

    # ------------------------------------------------------------------ the served model
    def model(self) -> LoadedModel:
        m = self.holder.current
        if m is None:
            raise NotReady(self.holder.last_error or "no model loaded yet")
        return m

    def _known(self, name: str) -> None:
        if name not in self.names:
            raise NotFound(f"unknown model {name!r}; this server serves {self.project.registered_model!r}")

    def served(self, name: str, version: str | None) -> LoadedModel:
        """The model a V2 path names (404 for another name or version, 503 before one is loaded)."""
        self._known(name)
        model = self.model()
        if version is not None and version != model.version:
            raise NotFound(f"model {name!r} version {version!r} is not served (serving version {model.version})")
        return model

    def model_ready(self, name: str, version: str | None) -> bool:
        self._known(name)
        m = self.holder.current
        return m is not None and (version is None or version == m.version)

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """V2 model metadata: the inputs (one tensor per model column) and the outputs."""
        model = self.served(name, version)
        inputs = [
            {"name": c.name, "datatype": KIND_TO_V2.get(c.kind, "BYTES"), "shape": [-1]}
            for c in model.signature.columns
        ]
        return {
            "name": name,
            "versions": [model.version],
            "platform": "mlflow",
            "inputs": inputs,
            "outputs": output_metadata(model.spec, model.has_proba),
        }

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "loopline", "version": __version__, "extensions": ["binary_tensor_data"]}

    def readiness(self) -> dict[str, Any] | None:
        """``{"ready": True, "model", "version"}``, or None while no model is loaded."""
        m = self.holder.current
        return None if m is None else {"ready": True, "model": m.name, "version": m.version}

    async def reload(self) -> dict[str, Any]:
        """Poll ``@champion`` now."""
        result = await self.holder.check_async()
        m = self.holder.current
        return {"result": result, "version": m.version if m else None, "error": self.holder.last_error}

    # ------------------------------------------------------------------ predict
    async def infer_mlflow(
        self, model: LoadedModel, body: bytes, content_type: str | None, t0: float
    ) -> dict[str, Any]:
        """An MLflow scoring request (JSON or CSV) to ``model`` (:meth:`model`, taken before the body is
        read) predicted and logged; ``t0`` is when it arrived."""
        parsed = self._beside_inputs(parse_mlflow(body, content_type, model.signature, self.passthrough))
        pred = await self._predict(model, parsed)
        ids = self._record(model, parsed, pred, "invocations", t0)
        out: dict[str, Any] = {"predictions": encode_predictions(pred.labels)}
        if pred.proba is not None and pred.probability is not None:
            out["probability"] = encode_predictions(pred.probability)
            out["classes"] = list(model.spec.classes)
            out["probabilities"] = encode_predictions(pred.proba)
        out["request_ids"] = ids
        out["model_version"] = model.version
        return out

    async def infer_v2(
        self, model: LoadedModel, name: str, body: bytes, header_length: str | None, t0: float
    ) -> tuple[bytes, int | None]:
        """An Open Inference V2 request to ``model`` (:meth:`served`): the encoded response, and its JSON
        header's length when the response carries binary tensors (None: all JSON)."""
        parsed = self._beside_inputs(parse_v2(body, header_length, model.signature, self.passthrough))
        wanted = select_outputs(parsed, output_names(model.spec, model.has_proba))
        pred = await self._predict(model, parsed)
        ids = self._record(model, parsed, pred, "v2_infer", t0)
        tensors = output_tensors(
            model.spec, pred.labels, pred.proba, pred.probability, model.classes_json, [n for n, _ in wanted]
        )
        binary = dict(wanted)
        flags = [binary[t.name] for t in tensors]
        return encode_v2(name, model.version, tensors, ids, parsed.v2_id, flags)

    async def _predict(self, model: LoadedModel, parsed: Parsed) -> Prediction:
        if model.inline and parsed.n <= INLINE_ROWS and (parsed.params is None or not model.signature.has_params):
            out = model.predict(parsed)
        else:
            out = await to_thread.run_sync(model.predict, parsed)
        if len(out) != parsed.n:
            raise Unprocessable(f"the model returned {len(out)} predictions for {parsed.n} rows")
        return out

    def _beside_inputs(self, parsed: Parsed) -> Parsed:
        """The columns sent beside the inputs: the event time parsed to a timestamp, every value checked
        against the log's column types (a 422 now rather than rows set aside in spill/rejected/ later)."""
        if self.time_column is not None and self.time_column in parsed.passthrough:
            parsed.passthrough[self.time_column] = event_times(self.time_column, parsed.passthrough[self.time_column])
        if self.logger is not None:
            self.logger.check_keys(parsed.passthrough)
        return parsed

    def _record(self, model: LoadedModel, parsed: Parsed, pred: Prediction, endpoint: str, t0: float) -> list[str]:
        ids = request_ids(parsed.n)
        latency = (time.perf_counter() - t0) * 1000.0
        if self.logger is not None:
            inputs = (
                parsed.columns
                if parsed.raw_frame is None
                else {k: np.asarray(v, dtype=object) for k, v in parsed.raw_frame.items()}
            )
            self.logger.record(
                Entry(
                    ids,
                    time.time_ns() // 1000,
                    model.name,
                    model.version,
                    endpoint,
                    latency,
                    pred.labels,
                    inputs,
                    parsed.passthrough,
                    proba=pred.proba,
                    probability=pred.probability,
                    spec=model.spec,
                )
            )
        self.metrics.observe_predictions(pred.labels, pred.probability)
        return ids

    # ------------------------------------------------------------------ feedback and metrics
    async def feedback(self, body: bytes) -> dict[str, Any]:
        """Labels appended to the ``feedback`` table (one commit, done before this returns)."""
        from loopline.serving.feedback import store_feedback

        return await store_feedback(self, body)

    async def metrics_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition (body, content type), with the log buffer and monitoring gauges current."""
        if self.logger is not None:
            self.metrics.buffer_rows.set(self.logger.buffered_rows)
        await self._refresh_monitoring()
        return self.metrics.render()

    async def _refresh_monitoring(self) -> None:
        """Latest monitoring verdicts as gauges, read at most once per reload interval, off the event loop."""
        now = time.monotonic()
        if now - self._monitoring_at < self.serving.reload_interval.total_seconds():
            return
        self._monitoring_at = now
        from loopline.monitoring.monitor import latest_verdicts

        try:
            verdicts = await to_thread.run_sync(latest_verdicts, self.project)
        except Exception as exc:  # monitoring is informative here; never fail a scrape on it
            log.warning("could not read the latest monitoring verdicts: %s", exc)
            return
        self.metrics.set_monitoring(verdicts)
