"""The Context of one environment in this process: the project, one MLflow client bound to the environment's
tracking and registry URIs, and a clock.

Built once per (project folder, environment) and process by :func:`context` and cached; the client is
constructed with both URIs explicitly, so using it never reads or changes MLflow's process-global URIs (a
notebook user's own ``mlflow.set_tracking_uri`` stays as it was, and two environments used in one process
each talk to their own database). The few MLflow calls that only exist in the "fluent", process-global form
go through :func:`loopline.tracking.bound`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from loopline.config import Project


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    """One environment of one project, as this process talks to it."""

    project: Project
    client: MlflowClient
    tracking_uri: str
    """The tracking URI the client uses (``postgresql://`` given its driver, see :func:`tracking.db_uri`)."""
    registry_uri: str
    clock: Callable[[], datetime] = field(default=utc_now)


_CONTEXTS: dict[tuple[str, str], Context] = {}
_LOCK = threading.Lock()


def context(project: Project) -> Context:
    """The cached Context of ``project``'s folder and environment, built on first use (after checking the
    tracking and registry servers answer). A project whose URIs changed since (a reloaded, edited
    ``loopline.yaml``) gets a new Context; the same URIs under another configuration keep the client."""
    from loopline import tracking

    key = (str(project.root.resolve()), project.env)
    tracking_uri, registry_uri = tracking.db_uri(project.tracking_uri), tracking.db_uri(project.registry_uri)
    with _LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None and (ctx.tracking_uri, ctx.registry_uri) == (tracking_uri, registry_uri):
            if ctx.project is not project and ctx.project != project:  # same database, another config
                ctx = _CONTEXTS[key] = dataclasses.replace(ctx, project=project)
            return ctx
    tracking.prepare(project)  # may take seconds (reachability); outside the lock
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    ctx = Context(project, client, tracking_uri, registry_uri)
    with _LOCK:
        current = _CONTEXTS.get(key)
        if current is not None and (current.tracking_uri, current.registry_uri) == (tracking_uri, registry_uri):
            return current  # another thread built it first: one client per environment
        _CONTEXTS[key] = ctx
    return ctx


def forget(project: Project | None = None) -> None:
    """Drop the cached Context of ``project`` (every one when None): the next use builds a new one."""
    with _LOCK:
        if project is None:
            _CONTEXTS.clear()
        else:
            _CONTEXTS.pop((str(project.root.resolve()), project.env), None)
