"""What every router shares: the bounded body, the JSON response, request metrics, the error handlers.

Routes raise :class:`~loopline.errors.ServingError` subclasses and never catch them: :func:`metered`
counts each request of a metered endpoint once (status and latency, whatever it ends with) and
:func:`serving_error` answers with the route's error body: the route class's ``error_body`` (the MLflow
scoring route's), else ``{"error": message}``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from loopline.errors import ServingError
from loopline.serving.errors import (
    CLIENT_GONE,
    ClientGone,
    InputError,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_body,
)
from loopline.serving.metrics import Metrics

log = logging.getLogger("loopline.serving")
P = ParamSpec("P")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json", headers=headers
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``serving.max_body_bytes``; a client that
    hangs up before sending it all is :class:`ClientGone` (499, never a 500)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(
                    f"request body of {declared} bytes is over the limit of {limit} bytes (serving.max_body_bytes)"
                )
        except ValueError:
            raise InputError("Content-Length is not an integer") from None
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise UnsupportedMediaType("compressed request bodies (Content-Encoding) are not supported")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes (serving.max_body_bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def metered(
    endpoint: str, metrics: Metrics
) -> Callable[[Callable[P, Awaitable[Response]]], Callable[P, Awaitable[Response]]]:
    """Count every request of ``fn`` under ``endpoint`` (``loopline_requests_total{endpoint, status}`` and
    ``loopline_request_latency_seconds{endpoint}``): the response's status, a ServingError's, or 500
    for anything else (a model or server bug: counted, then the 500 handler answers)."""

    def wrap(fn: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
        @functools.wraps(fn)
        async def counted(*args: P.args, **kwargs: P.kwargs) -> Response:
            t0 = time.perf_counter()
            status = 500
            try:
                response = await fn(*args, **kwargs)
                status = response.status_code
                return response
            except ServingError as exc:
                status = exc.status
                raise
            finally:
                metrics.request(endpoint, status, time.perf_counter() - t0)

        return counted

    return wrap


async def serving_error(request: Request, exc: Exception) -> Response:
    """The one handler of every :class:`ServingError`: its status, and the body of the route's protocol."""
    assert isinstance(exc, ServingError)
    if exc.status == CLIENT_GONE:
        return Response(status_code=CLIENT_GONE)
    render = getattr(request.scope.get("route"), "error_body", error_body)
    return Response(render(exc), status_code=exc.status, media_type="application/json")


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return json_response({"error": f"{where}: {first.get('msg')}"}, 422)


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": f"internal error: {type(exc).__name__}"}, 500)


def install_error_handlers(app: FastAPI) -> None:
    """ServingError -> its status and body; FastAPI's own validation errors -> 422; anything else -> 500."""
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _internal)
