"""Online serving: FastAPI/uvicorn app, MLflow + Open Inference V2 protocols, prediction log, auth, metrics.

Heavy imports (fastapi, mlflow) happen when a submodule is imported, not here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopline.config import Project

__all__ = ["LOG_FORMAT", "create_app", "process_logging", "project_from_env"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def process_logging() -> None:
    """A process `loopline serve` started (a spawned worker, the log committer) logs like the server:
    same format, level from LOOPLINE_LOG_LEVEL. No-op where logging is already configured."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("LOOPLINE_LOG_LEVEL", "INFO").upper(), format=LOG_FORMAT)


def project_from_env() -> Project:
    """The project `loopline serve` named in LOOPLINE_PROJECT / LOOPLINE_ENV for its processes."""
    from loopline.config import load_project

    return load_project(os.environ.get("LOOPLINE_PROJECT") or None, os.environ.get("LOOPLINE_ENV") or None)


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`loopline.serving.app.create_app`."""
    from loopline.serving.app import create_app as _create

    return _create(*args, **kwargs)
