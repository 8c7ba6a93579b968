"""Operations: ``/health`` (liveness, never authenticated), ``/ready``, ``/metrics`` (Prometheus, role
admin), ``/admin/reload`` (role admin), and the OpenAPI document with its Swagger UI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from loopline.serving import openapi as oa
from loopline.serving.dataplane import DataPlane
from loopline.serving.routes.common import json_response

UNAUTHENTICATED = ("/health", "/v2/health/live")  # open even when auth is on


class OpsEndpoints:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.auth = plane.auth

    async def health(self) -> Response:
        return json_response({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        state = self.plane.readiness()
        if state is None:
            return json_response({"ready": False, "error": self.plane.holder.last_error}, 503)
        return json_response(state)

    async def metrics(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), "admin")
        body, ctype = await self.plane.metrics_text()
        return Response(body, media_type=ctype)

    async def reload(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), "admin")
        return json_response(await self.plane.reload())

    async def openapi_json(self, request: Request) -> Response:
        self.auth.check(request.headers.get("authorization"), None)
        return json_response(openapi_document(request.app, self.plane.auth.enabled))

    async def docs(self, request: Request) -> Response:
        """Swagger UI (with auth on it needs a token too, and so does the /openapi.json it loads)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        self.auth.check(request.headers.get("authorization"), None)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="loopline model server")


def openapi_document(app: FastAPI, bearer: bool) -> dict[str, Any]:
    """The app's OpenAPI document (built once): FeedbackItem's schema, and bearer auth when tokens are on."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    item = oa.FeedbackItem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(item.pop("$defs", {}))
    schemas["FeedbackItem"] = item
    if bearer:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, ops in doc["paths"].items():
            for op in ops.values():
                if path not in UNAUTHENTICATED:
                    op["security"] = [{"bearer": []}]
    app.openapi_schema = doc
    return doc


def router(plane: DataPlane) -> APIRouter:
    e = OpsEndpoints(plane)
    r = APIRouter(tags=["ops"])
    r.add_api_route("/health", e.health, methods=["GET"], response_model=oa.Health, summary="Liveness (no auth)")
    r.add_api_route(
        "/ready",
        e.ready,
        methods=["GET"],
        response_model=oa.Ready,
        responses=oa.ERRS,
        summary="Readiness: a model is loaded",
    )
    r.add_api_route(
        "/metrics",
        e.metrics,
        methods=["GET"],
        responses=oa.ERRS,
        summary="Prometheus metrics (role admin)",
        response_class=Response,
    )
    r.add_api_route(
        "/admin/reload",
        e.reload,
        methods=["POST"],
        response_model=oa.ReloadResult,
        responses=oa.ERRS,
        summary="Poll @champion now (role admin)",
    )
    r.add_api_route("/openapi.json", e.openapi_json, methods=["GET"], include_in_schema=False)
    r.add_api_route("/docs", e.docs, methods=["GET"], include_in_schema=False)
    return r
