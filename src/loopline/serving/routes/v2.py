"""The Open Inference Protocol V2 (KServe v2) under ``/v2``: health, metadata and inference, JSON or
binary tensors; errors as ``{"error": message}``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from loopline.serving import openapi as oa
from loopline.serving.dataplane import DataPlane
from loopline.serving.routes.common import json_response, metered, read_body


class V2Endpoints:
    """The V2 endpoints, each a thin adapter from HTTP to the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.auth = plane.auth
        self.limit = plane.serving.max_body_bytes

    async def v2_live(self) -> Response:
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        ready = self.plane.holder.current is not None
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_server(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        return json_response(self.plane.server_metadata())

    async def v2_meta(self, request: Request, name: str) -> Response:
        return await self._meta(request, name, None)

    async def v2_meta_version(self, request: Request, name: str, version: str) -> Response:
        return await self._meta(request, name, version)

    async def _meta(self, request: Request, name: str, version: str | None) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        return json_response(self.plane.metadata(name, version))

    async def v2_model_ready(self, request: Request, name: str) -> Response:
        return await self._model_ready(request, name, None)

    async def v2_model_version_ready(self, request: Request, name: str, version: str) -> Response:
        return await self._model_ready(request, name, version)

    async def _model_ready(self, request: Request, name: str, version: str | None) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        ready = self.plane.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    async def v2_infer(self, request: Request, name: str) -> Response:
        """One input per model column (shape [N] or [N, 1]) or one [N, n_columns] tensor; role `predict`."""
        return await self._infer(request, name, None)

    async def v2_infer_version(self, request: Request, name: str, version: str) -> Response:
        return await self._infer(request, name, version)

    async def _infer(self, request: Request, name: str, version: str | None) -> Response:
        t0 = time.perf_counter()
        headers = request.headers
        self.auth.check(headers.get("authorization"), "predict")
        model = self.plane.served(name, version)
        body = await read_body(request, self.limit)
        header_len = headers.get("inference-header-content-length")
        content, out_len = await self.plane.infer_v2(model, name, body, header_len, t0)
        if out_len is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(out_len)}
        )


def router(plane: DataPlane) -> APIRouter:
    e = V2Endpoints(plane)
    r = APIRouter(tags=["v2"])
    get: dict[str, Any] = {"methods": ["GET"], "responses": oa.ERRS}
    model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    r.add_api_route(
        "/v2/health/live", e.v2_live, methods=["GET"], response_model=oa.V2Live, summary="V2 liveness (no auth)"
    )
    r.add_api_route("/v2/health/ready", e.v2_ready, **get, response_model=oa.V2Ready, summary="V2 readiness")
    r.add_api_route("/v2", e.v2_server, **get, response_model=oa.V2ServerMetadata, summary="V2 server metadata")
    meta, ready = oa.V2ModelMetadata, oa.V2ModelReady
    r.add_api_route(model, e.v2_meta, **get, response_model=meta, summary="V2 model metadata")
    r.add_api_route(version, e.v2_meta_version, **get, response_model=meta, summary="V2 model metadata (a version)")
    r.add_api_route(f"{model}/ready", e.v2_model_ready, **get, response_model=ready, summary="V2 model readiness")
    r.add_api_route(
        f"{version}/ready",
        e.v2_model_version_ready,
        **get,
        response_model=ready,
        summary="V2 model readiness (a version)",
    )
    post: dict[str, Any] = {
        "methods": ["POST"],
        "responses": oa.ERRS,
        "response_model": oa.V2InferResponse,
        "openapi_extra": oa.V2_INFER_BODY,
    }
    count = metered("v2_infer", plane.metrics)
    r.add_api_route(f"{model}/infer", count(e.v2_infer), **post, summary="V2 inference")
    r.add_api_route(f"{version}/infer", count(e.v2_infer_version), **post, summary="V2 inference (a version)")
    return r
