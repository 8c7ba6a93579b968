"""Serving errors: one hierarchy under LooplineError, one handler turning each into its protocol's body,
and one wrapper counting every request of a metered route whatever it ends with."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import generate_latest

from loopline.errors import LooplineError, ServingError
from loopline.serving import errors as se
from loopline.serving.auth import Auth
from loopline.serving.metrics import Metrics
from loopline.serving.routes.common import install_error_handlers, json_response, metered
from loopline.serving.routes.scoring import ScoringRoute


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (se.InputError("x"), 400),
        (se.Unauthorized("x"), 401),
        (se.Forbidden("x"), 403),
        (se.NotFound("x"), 404),
        (se.RequestTimeout("x"), 408),
        (se.Conflict("x"), 409),
        (se.PayloadTooLarge("x"), 413),
        (se.UnsupportedMediaType("x"), 415),
        (se.Unprocessable("x"), 422),
        (se.ClientGone(), 499),
        (se.NotReady("x"), 503),
        (se.ModelError("x"), 503),
        (se.Unavailable("x"), 503),
        (ServingError("x"), 500),
    ],
)
def test_every_serving_error_is_a_loopline_error_with_its_status(error: ServingError, status: int) -> None:
    assert isinstance(error, LooplineError) and error.status == status


def test_auth_refusals_are_serving_errors() -> None:
    auth = Auth(None)
    auth.enabled, auth.tokens = True, [(b"tok", frozenset({"predict"}))]
    with pytest.raises(se.Unauthorized, match=r"^missing Authorization: Bearer <token> header$"):
        auth.check(None, "predict")
    with pytest.raises(se.Forbidden, match=r"^this token lacks the 'admin' role$") as err:
        auth.check("Bearer tok", "admin")
    assert err.value.status == 403
    auth.check("Bearer tok", "predict")


def _app(metrics: Metrics) -> FastAPI:
    """Two routes raising what the query names: one with the MLflow scoring error body, one with the plain one."""
    raised = {
        "none": None,
        "bad": se.InputError("column 'x': 'a' at row 0 is a string, expected double"),
        "big": se.PayloadTooLarge("request body is over the limit of 10 bytes (serving.max_body_bytes)"),
        "unready": se.NotReady("registered model 'prod.demo' has no @champion"),
        "gone": se.ClientGone(),
        "bug": RuntimeError("a model bug"),
    }

    async def endpoint(request: Request) -> Response:
        exc = raised[request.query_params["raise"]]
        if exc is not None:
            raise exc
        return json_response({"ok": True})

    scoring = APIRouter(route_class=ScoringRoute)
    scoring.add_api_route("/invocations", metered("invocations", metrics)(endpoint), methods=["POST"])
    plain = APIRouter()
    plain.add_api_route("/feedback", metered("feedback", metrics)(endpoint), methods=["POST"])
    app = FastAPI(routes=[*scoring.routes, *plain.routes])
    install_error_handlers(app)
    return app


async def _post_all(app: FastAPI, names: list[str]) -> dict[tuple[str, str], httpx.Response]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return {
            (path, name): await client.post(path, params={"raise": name})
            for path in ("/invocations", "/feedback")
            for name in names
        }


def test_one_handler_answers_in_the_routes_protocol_and_every_request_is_counted() -> None:
    metrics = Metrics()
    cases = {
        "none": (200, {"ok": True}, {"ok": True}),
        "bad": (
            400,
            {"error_code": "BAD_REQUEST", "message": "column 'x': 'a' at row 0 is a string, expected double"},
            {"error": "column 'x': 'a' at row 0 is a string, expected double"},
        ),
        "big": (
            413,
            {
                "error_code": "REQUEST_LIMIT_EXCEEDED",
                "message": "request body is over the limit of 10 bytes (serving.max_body_bytes)",
            },
            {"error": "request body is over the limit of 10 bytes (serving.max_body_bytes)"},
        ),
        "unready": (
            503,
            {
                "error_code": "TEMPORARILY_UNAVAILABLE",
                "message": "no model is being served: registered model 'prod.demo' has no @champion",
            },
            {"error": "no model is being served: registered model 'prod.demo' has no @champion"},
        ),
        "bug": (500, {"error": "internal error: RuntimeError"}, {"error": "internal error: RuntimeError"}),
    }
    responses = asyncio.run(_post_all(_app(metrics), [*cases, "gone"]))
    for name, (status, scoring_body, plain_body) in cases.items():
        for path, body in (("/invocations", scoring_body), ("/feedback", plain_body)):
            r = responses[path, name]
            assert (r.status_code, r.json()) == (status, body), (path, name, r.text)
    r = responses["/invocations", "gone"]
    assert r.status_code == 499 and r.content == b""
    metrics.sync()
    text = generate_latest(metrics.registry).decode()
    for endpoint in ("invocations", "feedback"):
        for status in ("200", "400", "413", "503", "500"):
            assert f'loopline_requests_total{{endpoint="{endpoint}",status="{status}"}} 1.0' in text, text
        assert f'loopline_request_latency_seconds_count{{endpoint="{endpoint}"}}' in text
    assert 'loopline_requests_total{endpoint="invocations",status="499"} 1.0' in text
