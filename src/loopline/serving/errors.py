"""The server's errors: one :class:`~loopline.errors.ServingError` per HTTP status, one handler for all.

Every error a request can meet on purpose is a ``ServingError`` whose ``status`` is the HTTP status it
answers with; the routes never catch them. :func:`error_response` (the app's one exception handler)
turns any of them into the body the route's protocol uses: ``{"error_code", "message"}`` on the MLflow
scoring route, ``{"error": message}`` everywhere else. Nothing here imports FastAPI: the data plane
raises these without knowing about HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from loopline.errors import ServingError

__all__ = [
    "CLIENT_GONE",
    "AuthFailed",
    "ClientGone",
    "Conflict",
    "Forbidden",
    "InputError",
    "ModelError",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServingError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "error_body",
    "mlflow_error_body",
]

CLIENT_GONE = 499  # the client closed the connection before its request was read (nginx's code): never a 500


class InputError(ServingError):
    """A request the server refuses for what it sent (400: wrong shape or type); the message names the field."""

    status = 400


class Unprocessable(InputError):
    """Well-formed input the model or the log cannot take: a value out of range, an unknown class (422)."""

    status = 422


class NotFound(InputError):
    """A model name or version this server does not serve (404)."""

    status = 404


class RequestTimeout(InputError):
    """The request body did not arrive within ``serving.body_timeout`` (408)."""

    status = 408


class PayloadTooLarge(InputError):
    """The request body is over ``serving.max_body_bytes`` (413)."""

    status = 413


class UnsupportedMediaType(InputError):
    """A Content-Type or Content-Encoding the endpoint does not read (415)."""

    status = 415


class AuthFailed(ServingError):
    """The request's bearer token does not allow it."""

    status = 401


class Unauthorized(AuthFailed):
    """No token, a malformed Authorization header or an unknown token (401)."""

    status = 401


class Forbidden(AuthFailed):
    """A valid token without the endpoint's role (403)."""

    status = 403


class Conflict(ServingError):
    """The request cannot be stored beside what is stored already: e.g. labels of another type (409)."""

    status = 409


class Unavailable(ServingError):
    """The request cannot be served now; the client should retry (503)."""

    status = 503


class NotReady(Unavailable):
    """No model is loaded (no champion yet, or every version so far failed to load) (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no model is being served: {reason}")


class ModelError(Unavailable):
    """A model version could not be loaded or failed its smoke test (the server keeps the version it has)."""


class ClientGone(ServingError):
    """The client closed the connection before its request was read: answered (to no one) with 499."""

    status = CLIENT_GONE

    def __init__(self) -> None:
        super().__init__("the client closed the connection before sending the whole request")


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


def error_body(exc: ServingError) -> bytes:
    """``{"error": message}``: the body of every error but the MLflow scoring route's."""
    return _dumps({"error": exc.message})


def mlflow_error_body(exc: ServingError) -> bytes:
    """The MLflow scoring protocol's error body: ``{"error_code": ..., "message": ...}``."""
    return _dumps({"error_code": _MLFLOW_CODES.get(exc.status, "BAD_REQUEST"), "message": exc.message})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
