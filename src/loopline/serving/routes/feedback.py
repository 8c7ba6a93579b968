"""``POST /feedback``: labels for earlier predictions, appended to the ``feedback`` table."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from loopline.serving import openapi as oa
from loopline.serving.dataplane import DataPlane
from loopline.serving.routes.common import json_response, metered, read_body


def router(plane: DataPlane) -> APIRouter:
    auth, limit = plane.auth, plane.serving.max_body_bytes

    async def feedback(request: Request) -> Response:
        """Appends to the `feedback` table in one commit before answering (durable when `status` is ok).
        Unknown request ids are accepted and listed in `unknown_request_ids`. Each label is parsed to the
        served model's label type and must be one of its classes (else 422, nothing stored); 409 when the
        feedback table holds labels of another type. Role `feedback`."""
        auth.check(request.headers.get("authorization"), "feedback")
        body = await read_body(request, limit)
        return json_response(await plane.feedback(body))

    r = APIRouter()
    r.add_api_route(
        "/feedback",
        metered("feedback", plane.metrics)(feedback),
        methods=["POST"],
        tags=["feedback"],
        response_model=oa.FeedbackResponse,
        responses=oa.FEEDBACK_ERRS,
        openapi_extra=oa.FEEDBACK_BODY,
        summary="Record labels",
    )
    return r
