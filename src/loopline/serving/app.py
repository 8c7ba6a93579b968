"""The online server: FastAPI on uvicorn, serving ``models:/<registered>@champion``.

``create_app()`` is the uvicorn factory (``loopline.serving.app:create_app``); with no argument it
loads the project from ``LOOPLINE_PROJECT`` / ``LOOPLINE_ENV`` so every worker process builds its
own app (own model, own log buffer). Without a champion the server starts *not ready* (``/ready``
and predict answer 503 with the reason) and picks the champion up as soon as one is promoted.

Endpoints: ``POST /invocations`` (MLflow scoring), the Open Inference Protocol V2 under ``/v2``,
``POST /feedback``, ``GET /health`` (liveness, never authenticated), ``GET /ready``,
``GET /metrics`` (Prometheus, role admin), ``POST /admin/reload`` (role admin).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from loopline import __version__
from loopline.config import Project
from loopline.errors import ServingError
from loopline.serving import openapi as oa
from loopline.serving import process_logging, project_from_env
from loopline.serving.auth import Auth, AuthFailed
from loopline.serving.limits import BodyTimeout
from loopline.serving.logger import TABLE as LOG_TABLE
from loopline.serving.logger import Entry, PredictionLogger, log_conflict_message, spill_path
from loopline.serving.metrics import SYNC_SECONDS, Metrics, mark_process_dead
from loopline.serving.model import LoadedModel, ModelError, ModelHolder, Prediction
from loopline.serving.protocols import (
    KIND_TO_V2,
    Parsed,
    encode_predictions,
    encode_v2,
    output_metadata,
    output_names,
    output_tensors,
    parse_mlflow,
    parse_v2,
    select_outputs,
)
from loopline.serving.schema import InputError, event_times
from loopline.tables import DeltaStore

log = logging.getLogger("loopline.serving")
CLIENT_GONE = 499  # the client closed the connection before its request was read (nginx's code): never a 500
INLINE_ROWS = 64  # small fast-path batches predict on the event loop; bigger ones in the threadpool
_MLFLOW_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    503: "TEMPORARILY_UNAVAILABLE",
}
_ERRS: dict[int | str, dict[str, Any]] = {s: {"model": oa.ErrorBody} for s in (400, 401, 403, 404, 413, 415, 422, 503)}
_FEEDBACK_ERRS: dict[int | str, dict[str, Any]] = {
    s: {"model": oa.ErrorBody} for s in (400, 401, 403, 409, 413, 422, 503)
}
_MLFLOW_ERRS: dict[int | str, dict[str, Any]] = {
    s: {"model": oa.MlflowErrorBody} for s in (400, 401, 403, 413, 415, 422, 503)
}


class NotReady(Exception):
    pass


class Server:
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

    def model(self) -> LoadedModel:
        m = self.holder.current
        if m is None:
            raise NotReady(self.holder.last_error or "no model loaded yet")
        return m


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    import json

    return Response(
        json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json", headers=headers
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``serving.max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise InputError(
                    f"request body of {declared} bytes is over the limit of {limit} bytes (serving.max_body_bytes)",
                    status=413,
                )
        except ValueError:
            raise InputError("Content-Length is not an integer") from None
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise InputError("compressed request bodies (Content-Encoding) are not supported", status=415)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"request body is over the limit of {limit} bytes (serving.max_body_bytes)", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _ids(n: int) -> list[str]:
    base = os.urandom(12).hex()
    return [f"{base}-{i}" for i in range(n)]


def _limit_native_threads() -> None:
    """Small requests predict on the event-loop thread: one OpenMP/BLAS thread there (scale with
    --workers instead). Spinning thread teams cost more than a one-row predict, most of all on a busy
    machine. Big batches run in the threadpool with the library defaults. LOOPLINE_SERVE_THREADS overrides."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=int(os.environ.get("LOOPLINE_SERVE_THREADS", "1")))


def _freeze_startup_heap() -> None:
    """Move everything alive after startup (mlflow, sklearn, the model: millions of objects) out of
    the cyclic garbage collector's reach. Otherwise a full collection, which the request and flush
    garbage triggers now and then, walks all of it and stalls the event loop for 100-200 ms (seen as
    the p99 of a loaded server). Refcounting still frees these objects; new garbage is collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


async def _sync_metrics(metrics: Metrics) -> None:
    """Apply the counted requests to the Prometheus metrics every SYNC_SECONDS (``/metrics`` syncs too)."""
    while True:
        await asyncio.sleep(SYNC_SECONDS)
        try:
            metrics.sync()
        except Exception:
            log.exception("metrics update failed")


def create_app(project: Project | None = None) -> FastAPI:
    """The ASGI app (uvicorn factory). ``project`` defaults to LOOPLINE_PROJECT / LOOPLINE_ENV."""
    process_logging()
    if project is None:
        project = project_from_env()
    S = Server(project)
    limit = S.serving.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _limit_native_threads()
        if S.logger is not None:
            problems = S.logger.conflicts()  # `loopline serve` said so before starting; this is uvicorn's way
            if problems:
                log.error("refusing to start: %s", log_conflict_message(problems))
                raise ServingError(log_conflict_message(problems))
            await S.logger.start()
        result = await S.holder.check_async()
        if S.holder.current is None:
            log.warning("starting NOT READY (%s): %s", result, S.holder.last_error)
        S.holder.start(S.serving.reload_interval.total_seconds())
        syncing = asyncio.get_running_loop().create_task(_sync_metrics(S.metrics))
        _freeze_startup_heap()
        try:
            yield
        finally:  # uvicorn has stopped accepting and drained in-flight requests
            syncing.cancel()
            await S.holder.stop()
            if S.logger is not None:
                await S.logger.close()
                log.info(
                    "prediction log closed (%d rows committed, %d staged by this worker)",
                    S.logger.rows_flushed,
                    S.logger.rows_staged,
                )
            try:
                S.metrics.sync()
            except Exception:  # e.g. the multiprocess metrics folder is gone: never in the way of shutdown
                log.exception("last metrics update failed")
            mark_process_dead(os.getpid())

    app = FastAPI(
        title="loopline model server",
        version=__version__,
        description=f"Serves `models:/{project.registered_model}@champion` (MLflow scoring protocol and Open "
        "Inference Protocol V2), logs every prediction to the `inference_log` table and takes feedback labels.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = S
    app.add_middleware(BodyTimeout, seconds=S.serving.body_timeout.total_seconds())

    monitoring_state = {"at": float("-inf")}

    async def _refresh_monitoring() -> None:
        """Latest monitoring verdicts as gauges, read at most once per reload interval, off the event loop."""
        now = time.monotonic()
        if now - monitoring_state["at"] < S.serving.reload_interval.total_seconds():
            return
        monitoring_state["at"] = now
        from loopline.monitoring.monitor import latest_verdicts

        try:
            verdicts = await run_in_threadpool(latest_verdicts, project)
        except Exception as exc:  # monitoring is informative here; never fail a scrape on it
            log.warning("could not read the latest monitoring verdicts: %s", exc)
            return
        S.metrics.set_monitoring(verdicts)

    def guard(request: Request, role: str | None) -> None:
        S.auth.check(request.headers.get("authorization"), role)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json({"error": f"{where}: {first.get('msg')}"}, 422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _json({"error": f"internal error: {type(exc).__name__}"}, 500)

    def mlflow_error(status: int, message: str) -> Response:
        return _json({"error_code": _MLFLOW_CODES.get(status, "BAD_REQUEST"), "message": message}, status)

    async def predict(model: LoadedModel, parsed: Parsed) -> Prediction:
        if model.inline and parsed.n <= INLINE_ROWS and (parsed.params is None or not model.signature.has_params):
            out = model.predict(parsed)
        else:
            out = await run_in_threadpool(model.predict, parsed)
        if len(out) != parsed.n:
            raise InputError(f"the model returned {len(out)} predictions for {parsed.n} rows", status=422)
        return out

    def beside_inputs(parsed: Parsed) -> Parsed:
        """The columns sent beside the inputs: the event time parsed to a timestamp, every value checked
        against the log's column types (a 422 now rather than rows set aside in spill/rejected/ later)."""
        if S.time_column is not None and S.time_column in parsed.passthrough:
            parsed.passthrough[S.time_column] = event_times(S.time_column, parsed.passthrough[S.time_column])
        if S.logger is not None:
            S.logger.check_keys(parsed.passthrough)
        return parsed

    def record(model: LoadedModel, parsed: Parsed, pred: Prediction, endpoint: str, t0: float) -> list[str]:
        ids = _ids(parsed.n)
        latency = (time.perf_counter() - t0) * 1000.0
        if S.logger is not None:
            inputs = (
                parsed.columns
                if parsed.raw_frame is None
                else {k: np.asarray(v, dtype=object) for k, v in parsed.raw_frame.items()}
            )
            S.logger.record(
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
        S.metrics.observe_predictions(pred.labels, pred.probability)
        return ids

    # ------------------------------------------------------------------ MLflow scoring protocol
    @app.post(
        "/invocations",
        tags=["predict"],
        response_model=oa.InvocationsResponse,
        responses=_MLFLOW_ERRS,
        openapi_extra=oa.INVOCATIONS_BODY,
        summary="Predict (MLflow scoring protocol)",
    )
    async def invocations(request: Request) -> Response:
        """JSON (`dataframe_split`, `dataframe_records`, `instances`, `inputs`, + `params`) or `text/csv`.
        Needs the `predict` role when auth is on."""
        t0 = time.perf_counter()
        status = 200
        try:
            guard(request, "predict")
            model = S.model()
            body = await read_body(request, limit)
            parsed = beside_inputs(
                parse_mlflow(body, request.headers.get("content-type"), model.signature, S.passthrough)
            )
            pred = await predict(model, parsed)
            ids = record(model, parsed, pred, "invocations", t0)
            out: dict[str, Any] = {"predictions": encode_predictions(pred.labels)}
            if pred.proba is not None and pred.probability is not None:
                out["probability"] = encode_predictions(pred.probability)
                out["classes"] = list(model.spec.classes)
                out["probabilities"] = encode_predictions(pred.proba)
            out["request_ids"] = ids
            out["model_version"] = model.version
            return _json(out)
        except InputError as exc:
            status = exc.status
            return mlflow_error(exc.status, exc.message)
        except AuthFailed as exc:
            status = exc.status
            return mlflow_error(exc.status, exc.message)
        except NotReady as exc:
            status = 503
            return mlflow_error(503, f"no model is being served: {exc}")
        except ClientDisconnect:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        except Exception:
            status = 500  # a model or server bug, never client input: counted, then the 500 handler answers
            raise
        finally:
            S.metrics.request("invocations", status, time.perf_counter() - t0)

    # ------------------------------------------------------------------ Open Inference Protocol V2
    def v2_model(name: str, version: str | None) -> LoadedModel:
        if name not in S.names:
            raise InputError(f"unknown model {name!r}; this server serves {project.registered_model!r}", status=404)
        model = S.model()
        if version is not None and version != model.version:
            raise InputError(
                f"model {name!r} version {version!r} is not served (serving version {model.version})", status=404
            )
        return model

    def v2_error(exc: Exception) -> Response:
        if isinstance(exc, (InputError, AuthFailed)):
            return _json({"error": exc.message}, exc.status)
        return _json({"error": f"no model is being served: {exc}"}, 503)

    @app.get("/v2/health/live", tags=["v2"], response_model=oa.V2Live, summary="V2 liveness (no auth)")
    async def v2_live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["v2"], response_model=oa.V2Ready, responses=_ERRS, summary="V2 readiness")
    async def v2_ready(request: Request) -> Response:
        try:
            guard(request, None)
        except AuthFailed as exc:
            return v2_error(exc)
        ready = S.holder.current is not None
        return _json({"ready": ready}, 200 if ready else 503)

    @app.get("/v2", tags=["v2"], response_model=oa.V2ServerMetadata, responses=_ERRS, summary="V2 server metadata")
    async def v2_server(request: Request) -> Response:
        try:
            guard(request, None)
        except AuthFailed as exc:
            return v2_error(exc)
        return _json({"name": "loopline", "version": __version__, "extensions": ["binary_tensor_data"]})

    def metadata(name: str, model: LoadedModel) -> dict[str, Any]:
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

    async def _v2_meta(request: Request, name: str, version: str | None) -> Response:
        try:
            guard(request, None)
            return _json(metadata(name, v2_model(name, version)))
        except (InputError, AuthFailed, NotReady) as exc:
            return v2_error(exc)

    async def _v2_model_ready(request: Request, name: str, version: str | None) -> Response:
        try:
            guard(request, None)
            if name not in S.names:
                raise InputError(f"unknown model {name!r}; this server serves {project.registered_model!r}", 404)
            m = S.holder.current
            ready = m is not None and (version is None or version == m.version)
            return _json({"name": name, "ready": ready}, 200 if ready else 503)
        except (InputError, AuthFailed) as exc:
            return v2_error(exc)

    async def _v2_infer(request: Request, name: str, version: str | None) -> Response:
        t0 = time.perf_counter()
        status = 200
        try:
            guard(request, "predict")
            model = v2_model(name, version)
            body = await read_body(request, limit)
            parsed = beside_inputs(
                parse_v2(body, request.headers.get("inference-header-content-length"), model.signature, S.passthrough)
            )
            wanted = select_outputs(parsed, output_names(model.spec, model.has_proba))
            pred = await predict(model, parsed)
            ids = record(model, parsed, pred, "v2_infer", t0)
            tensors = output_tensors(
                model.spec, pred.labels, pred.proba, pred.probability, model.classes_json, [n for n, _ in wanted]
            )
            binary = dict(wanted)
            flags = [binary[t.name] for t in tensors]
            content, header_len = encode_v2(name, model.version, tensors, ids, parsed.v2_id, flags)
            if header_len is None:
                return Response(content, media_type="application/json")
            return Response(
                content,
                media_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(header_len)},
            )
        except (InputError, AuthFailed, NotReady) as exc:
            resp = v2_error(exc)
            status = resp.status_code
            return resp
        except ClientDisconnect:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        except Exception:
            status = 500
            raise
        finally:
            S.metrics.request("v2_infer", status, time.perf_counter() - t0)

    @app.get(
        "/v2/models/{name}",
        tags=["v2"],
        response_model=oa.V2ModelMetadata,
        responses=_ERRS,
        summary="V2 model metadata",
    )
    async def v2_meta(request: Request, name: str) -> Response:
        return await _v2_meta(request, name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}",
        tags=["v2"],
        response_model=oa.V2ModelMetadata,
        responses=_ERRS,
        summary="V2 model metadata (a version)",
    )
    async def v2_meta_version(request: Request, name: str, version: str) -> Response:
        return await _v2_meta(request, name, version)

    @app.get(
        "/v2/models/{name}/ready",
        tags=["v2"],
        response_model=oa.V2ModelReady,
        responses=_ERRS,
        summary="V2 model readiness",
    )
    async def v2_model_ready(request: Request, name: str) -> Response:
        return await _v2_model_ready(request, name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["v2"],
        response_model=oa.V2ModelReady,
        responses=_ERRS,
        summary="V2 model readiness (a version)",
    )
    async def v2_model_version_ready(request: Request, name: str, version: str) -> Response:
        return await _v2_model_ready(request, name, version)

    @app.post(
        "/v2/models/{name}/infer",
        tags=["v2"],
        response_model=oa.V2InferResponse,
        responses=_ERRS,
        openapi_extra=oa.V2_INFER_BODY,
        summary="V2 inference",
    )
    async def v2_infer(request: Request, name: str) -> Response:
        """One input per model column (shape [N] or [N, 1]) or one [N, n_columns] tensor; role `predict`."""
        return await _v2_infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["v2"],
        response_model=oa.V2InferResponse,
        responses=_ERRS,
        openapi_extra=oa.V2_INFER_BODY,
        summary="V2 inference (a version)",
    )
    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        return await _v2_infer(request, name, version)

    # ------------------------------------------------------------------ feedback
    @app.post(
        "/feedback",
        tags=["feedback"],
        response_model=oa.FeedbackResponse,
        responses=_FEEDBACK_ERRS,
        openapi_extra=oa.FEEDBACK_BODY,
        summary="Record labels",
    )
    async def feedback(request: Request) -> Response:
        """Appends to the `feedback` table in one commit before answering (durable when `status` is ok).
        Unknown request ids are accepted and listed in `unknown_request_ids`. Each label is parsed to the
        served model's label type and must be one of its classes (else 422, nothing stored); 409 when the
        feedback table holds labels of another type. Role `feedback`."""
        from loopline.serving.feedback import FeedbackError, store_feedback

        t0 = time.perf_counter()
        status = 200
        try:
            guard(request, "feedback")
            body = await read_body(request, limit)
            result = await store_feedback(S, body)
            return _json(result)
        except (InputError, AuthFailed) as exc:
            status = exc.status
            return _json({"error": exc.message}, exc.status)
        except FeedbackError as exc:
            status = exc.status
            return _json({"error": exc.message}, exc.status)
        except ClientDisconnect:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        except Exception:
            status = 500
            raise
        finally:
            S.metrics.request("feedback", status, time.perf_counter() - t0)

    # ------------------------------------------------------------------ operations
    @app.get("/health", tags=["ops"], response_model=oa.Health, summary="Liveness (no auth)")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready", tags=["ops"], response_model=oa.Ready, responses=_ERRS, summary="Readiness: a model is loaded")
    async def ready(request: Request) -> Response:
        try:
            guard(request, None)
        except AuthFailed as exc:
            return _json({"error": exc.message}, exc.status)
        m = S.holder.current
        if m is None:
            return _json({"ready": False, "error": S.holder.last_error}, 503)
        return _json({"ready": True, "model": m.name, "version": m.version})

    @app.get(
        "/metrics", tags=["ops"], responses=_ERRS, summary="Prometheus metrics (role admin)", response_class=Response
    )
    async def metrics(request: Request) -> Response:
        try:
            guard(request, "admin")
        except AuthFailed as exc:
            return _json({"error": exc.message}, exc.status)
        if S.logger is not None:
            S.metrics.buffer_rows.set(S.logger.buffered_rows)
        await _refresh_monitoring()
        body, ctype = S.metrics.render()
        return Response(body, media_type=ctype)

    @app.post(
        "/admin/reload",
        tags=["ops"],
        response_model=oa.ReloadResult,
        responses=_ERRS,
        summary="Poll @champion now (role admin)",
    )
    async def reload(request: Request) -> Response:
        try:
            guard(request, "admin")
        except AuthFailed as exc:
            return _json({"error": exc.message}, exc.status)
        result = await S.holder.check_async()
        m = S.holder.current
        return _json({"result": result, "version": m.version if m else None, "error": S.holder.last_error})

    # ------------------------------------------------------------------ the OpenAPI document itself
    def build_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        item = oa.FeedbackItem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(item.pop("$defs", {}))
        schemas["FeedbackItem"] = item
        if S.auth.enabled:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    if path not in ("/health", "/v2/health/live"):
                        op["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> Response:
        try:
            guard(request, None)
        except AuthFailed as exc:
            return _json({"error": exc.message}, exc.status)
        return _json(build_openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        """Swagger UI (with auth on it needs a token too, and so does the /openapi.json it loads)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        try:
            guard(request, None)
        except AuthFailed as exc:
            return _json({"error": exc.message}, exc.status)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="loopline model server")

    return app
