"""MLflow wiring for one environment: tracking/registry URIs, the experiment, the champion alias.

mlflow is imported inside the functions so that importing loopline stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopline.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from loopline.config import Project

CHAMPION = "champion"
CHALLENGER = "challenger"


def db_uri(uri: str) -> str:
    """A ``postgresql://`` / ``postgres://`` URI with the psycopg (3) driver SQLAlchemy needs when psycopg2 is absent.

    SQLAlchemy's default PostgreSQL driver is psycopg2; loopline depends on psycopg 3, so a bare
    ``postgresql://`` becomes ``postgresql+psycopg://``. URIs naming a driver are left alone.
    """
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            import importlib.util

            driver = "postgresql" if importlib.util.find_spec("psycopg2") else "postgresql+psycopg"
            return f"{driver}://{uri[len(scheme) :]}"
    return uri


def client(project: Project) -> MlflowClient:
    """Point mlflow at the environment's tracking and registry URIs and return a client."""
    import mlflow
    from mlflow import MlflowClient

    if project.tracking_uri.startswith("sqlite:///"):
        project.state_dir.mkdir(parents=True, exist_ok=True)
    tracking, registry = db_uri(project.tracking_uri), db_uri(project.registry_uri)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=tracking, registry_uri=registry)


def experiment_id(project: Project) -> str:
    """The environment's experiment (``/<project>/<env>``), created with the artifact root on first use."""
    c = client(project)
    name = f"/{project.config.project}/{project.env}"
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(c.create_experiment(name, artifact_location=project.artifact_root))


def alias_version(project: Project, alias: str = CHAMPION) -> ModelVersion | None:
    """The model version holding ``alias`` in the environment's registered model, or None."""
    from mlflow.exceptions import MlflowException

    c = client(project)
    try:
        return c.get_model_version_by_alias(project.registered_model, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"cannot read alias @{alias} of {project.registered_model}: {exc.message}") from None


def require_champion(project: Project) -> ModelVersion:
    mv = alias_version(project, CHAMPION)
    if mv is None:
        raise RegistryError(
            f"registered model {project.registered_model!r} has no @{CHAMPION}",
            hint=f"train and promote a model first: loopline run train --env {project.env} && "
            f"loopline promote --env {project.env}",
        )
    return mv


def model_uri(project: Project, alias: str = CHAMPION) -> str:
    return f"models:/{project.registered_model}@{alias}"
