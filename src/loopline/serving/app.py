"""The online server: FastAPI on uvicorn, serving ``models:/<registered>@champion``.

``create_app()`` is the uvicorn factory (``loopline.serving.app:create_app``); with no argument it
loads the project from ``LOOPLINE_PROJECT`` / ``LOOPLINE_ENV`` so every worker process builds its
own app (own model, own log buffer). Without a champion the server starts *not ready* (``/ready``
and predict answer 503 with the reason) and picks the champion up as soon as one is promoted.

The app is wiring only: the work is the :class:`~loopline.serving.dataplane.DataPlane`'s, the
endpoints are one router per protocol (``loopline.serving.routes``: ``POST /invocations``, the Open
Inference Protocol V2 under ``/v2``, ``POST /feedback``, ``/health``, ``/ready``, ``/metrics``,
``/admin/reload``), and every refusal is a ``ServingError`` answered by one exception handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from loopline import __version__
from loopline.config import Project
from loopline.serving import process_logging, project_from_env
from loopline.serving.dataplane import DataPlane
from loopline.serving.limits import BodyTimeout
from loopline.serving.metrics import SYNC_SECONDS, Metrics, mark_process_dead
from loopline.serving.routes import feedback, ops, scoring, v2
from loopline.serving.routes.common import install_error_handlers

log = logging.getLogger("loopline.serving")


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


def _lifespan(plane: DataPlane) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the plane (log, champion, alias poller) and the metrics sync; on shutdown stop them in order."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _limit_native_threads()
        await plane.start()
        syncing = asyncio.get_running_loop().create_task(_sync_metrics(plane.metrics))
        _freeze_startup_heap()
        try:
            yield
        finally:  # uvicorn has stopped accepting and drained in-flight requests
            syncing.cancel()
            await plane.stop()
            try:
                plane.metrics.sync()
            except Exception:  # e.g. the multiprocess metrics folder is gone: never in the way of shutdown
                log.exception("last metrics update failed")
            mark_process_dead(os.getpid())

    return lifespan


def create_app(project: Project | None = None) -> FastAPI:
    """The ASGI app (uvicorn factory). ``project`` defaults to LOOPLINE_PROJECT / LOOPLINE_ENV."""
    process_logging()
    if project is None:
        project = project_from_env()
    plane = DataPlane(project)
    # the routers' routes go straight into the app's route list: one match per request, as one router
    routes = [route for r in (scoring, v2, feedback, ops) for route in r.router(plane).routes]
    app = FastAPI(
        title="loopline model server",
        version=__version__,
        description=f"Serves `models:/{project.registered_model}@champion` (MLflow scoring protocol and Open "
        "Inference Protocol V2), logs every prediction to the `inference_log` table and takes feedback labels.",
        routes=routes,
        lifespan=_lifespan(plane),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.plane = plane
    install_error_handlers(app)
    app.add_middleware(BodyTimeout, seconds=plane.serving.body_timeout.total_seconds())
    return app
