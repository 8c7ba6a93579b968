"""``POST /invocations``: the MLflow scoring protocol (errors as ``{"error_code", "message"}``)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from loopline.serving import openapi as oa
from loopline.serving.dataplane import DataPlane
from loopline.serving.errors import mlflow_error_body
from loopline.serving.routes.common import json_response, metered, read_body


class ScoringRoute(APIRoute):
    """A route whose errors take the MLflow scoring protocol's body."""

    error_body = staticmethod(mlflow_error_body)


def router(plane: DataPlane) -> APIRouter:
    auth, limit = plane.auth, plane.serving.max_body_bytes

    async def invocations(request: Request) -> Response:
        """JSON (`dataframe_split`, `dataframe_records`, `instances`, `inputs`, + `params`) or `text/csv`.
        Needs the `predict` role when auth is on."""
        t0 = time.perf_counter()
        headers = request.headers
        auth.check(headers.get("authorization"), "predict")
        model = plane.model()
        body = await read_body(request, limit)
        return json_response(await plane.infer_mlflow(model, body, headers.get("content-type"), t0))

    r = APIRouter(route_class=ScoringRoute)
    r.add_api_route(
        "/invocations",
        metered("invocations", plane.metrics)(invocations),
        methods=["POST"],
        tags=["predict"],
        response_model=oa.InvocationsResponse,
        responses=oa.MLFLOW_ERRS,
        openapi_extra=oa.INVOCATIONS_BODY,
        summary="Predict (MLflow scoring protocol)",
    )
    return r
