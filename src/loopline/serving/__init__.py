"""Online serving: FastAPI/uvicorn app, MLflow + Open Inference V2 protocols, prediction log, auth, metrics.

Heavy imports (fastapi, mlflow) happen when a submodule is imported, not here.
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`loopline.serving.app.create_app`."""
    from loopline.serving.app import create_app as _create

    return _create(*args, **kwargs)
