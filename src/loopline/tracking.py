"""MLflow wiring for one environment: tracking/registry URIs, the experiment, the champion alias.

mlflow is imported inside the functions so that importing loopline stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from loopline.compat import require
from loopline.errors import LooplineError, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

    from loopline.config import Project

log = logging.getLogger("loopline.tracking")
CHAMPION = "champion"
CHALLENGER = "challenger"
REACH_TIMEOUT_S = 5.0
"""How long a tracking server or database may take to answer before a command fails (MLflow itself retries
for minutes)."""
_REACHED: set[str] = set()


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


def safe_uri(uri: str) -> str:
    """A URI with any password replaced by ``***`` (safe to print)."""
    parts = urlsplit(uri)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return uri


def unreachable(project: Project, exc: BaseException | str, uri: str | None = None) -> LooplineError:
    """The error of a tracking server or database that does not answer, naming its URI (password hidden)."""
    uri = uri or project.registry_uri
    what = "registry URI" if uri == project.registry_uri and uri != project.tracking_uri else "tracking URI"
    return LooplineError(
        f"cannot reach MLflow at {what} {safe_uri(uri)}: {exc}",
        hint="check the server is running and environments.<env>.tracking_uri in loopline.yaml",
    )


def check_reachable(project: Project, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds (LooplineError naming the URI) when the tracking or registry server does
    not answer; MLflow itself retries for minutes. HTTP(S): ``GET /health``; PostgreSQL: a connection; any
    other ``scheme://host:port`` database: a TCP connection. Checked once per URI and process."""
    for uri in dict.fromkeys((project.tracking_uri, project.registry_uri)):
        if uri in _REACHED:
            continue
        problem = _probe(uri, timeout)
        if problem is not None:
            raise unreachable(project, problem, uri)
        _REACHED.add(uri)


def _probe(uri: str, timeout: float) -> str | None:
    """Why ``uri`` cannot be reached, or None when it answers (or is a local file / sqlite / plugin scheme)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file", "sqlite", "databricks", "databricks-uc", "uc"):
        return None
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # something answered; a proxy without /health is fine
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        psycopg = require("psycopg", extra="postgres")

        try:
            psycopg.connect(_libpq(uri), connect_timeout=max(1, round(timeout))).close()
        except psycopg.Error as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None
    return _tcp(uri, timeout)


def _libpq(uri: str) -> str:
    """A SQLAlchemy PostgreSQL URI as libpq takes it (no ``+driver``)."""
    scheme, rest = uri.split("://", 1)
    return f"postgresql://{rest}" if scheme.split("+")[0] in ("postgresql", "postgres") else uri


def _tcp(uri: str, timeout: float) -> str | None:
    import socket

    parts = urlsplit(uri)
    if not parts.hostname:
        return None
    default = {"mysql": 3306, "mssql": 1433}.get(parts.scheme.split("+")[0])
    port = parts.port or default
    if port is None:
        return None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return str(exc)
    return None


_RELOCATED: set[str] = set()


def relocate(project: Project) -> str | None:
    """Make a copied or moved project use its own state: when the default sqlite database in the state folder
    names artifact locations under another project's ``.loopline/<env>`` folder (MLflow stores absolute
    paths), rewrite them to this state folder, in one transaction. Returns the old state folder, or None.
    Only for the default layout (sqlite in ``.loopline/<env>/mlflow.db``, default artifact root)."""
    import sqlite3

    db = project.state_dir / "mlflow.db"
    default = (project.state_dir / "artifacts").as_uri()
    if (
        str(db) in _RELOCATED
        or project.tracking_uri != f"sqlite:///{db}"
        or project.artifact_root != default
        or not db.is_file()
    ):
        return None
    _RELOCATED.add(str(db))
    name = f"/{project.config.project}/{project.env}"
    with sqlite3.connect(db) as con:
        try:
            row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (name,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        suffix = f"/.loopline/{project.env}/artifacts"
        if row is None or not row[0] or row[0] == default or not str(row[0]).endswith(suffix):
            return None
        old = str(row[0]).removeprefix("file://").removesuffix("/artifacts")
        new = str(project.state_dir)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for col in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" in str(col[2]).upper() or "TEXT" in str(col[2]).upper():
                    c = col[1]
                    con.execute(
                        f'UPDATE "{table}" SET "{c}" = replace("{c}", ?, ?) WHERE instr("{c}", ?) > 0',
                        (old + "/", new + "/", old + "/"),
                    )
    log.warning("state moved from %s: MLflow artifact locations now point to %s", old, new)
    return old


def outside_paths(project: Project) -> list[str]:
    """Local artifact locations the environment's sqlite registry names outside the project folder (a copied
    or moved project; a custom ``artifact_root`` elsewhere): what ``loopline check`` warns about. Read with
    sqlite3 directly, so checking never creates or migrates the database."""
    import sqlite3

    db = project.state_dir / "mlflow.db"
    if project.tracking_uri != f"sqlite:///{db}" or not db.is_file():
        return []
    root = str(project.root.resolve()) + "/"
    found: list[str] = []
    queries = [  # MLflow's own "Default" experiment points wherever the first client ran: not ours
        "SELECT artifact_location FROM experiments WHERE name <> 'Default'",
        "SELECT storage_location FROM model_versions",
    ]
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        for query in queries:
            try:
                rows = con.execute(query).fetchall()
            except sqlite3.DatabaseError:
                continue
            for (value,) in rows:
                path = str(value or "").removeprefix("file://")
                if path.startswith("/") and not path.startswith(root):
                    found.append(path)
    return list(dict.fromkeys(found))


def client(project: Project) -> MlflowClient:
    """Point mlflow at the environment's tracking and registry URIs and return a client (after
    :func:`check_reachable`)."""
    import mlflow
    from mlflow import MlflowClient

    check_reachable(project)
    if project.tracking_uri.startswith("sqlite:///"):
        project.state_dir.mkdir(parents=True, exist_ok=True)
        relocate(project)
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


def load_model(uri: str) -> PyFuncModel:
    """``mlflow.pyfunc.load_model`` without MLflow's own requirement check, which maps every installed
    distribution to its modules (~1 s per load); :func:`requirement_mismatches` checks the model's
    ``requirements.txt`` against the installed versions instead and each mismatch is logged as a warning."""
    import mlflow.artifacts
    import mlflow.pyfunc

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)  # a local artifact store: its own folder
    model = mlflow.pyfunc.load_model(local, suppress_warnings=True)
    requirements = Path(local) / "requirements.txt"
    if requirements.is_file():
        for problem in requirement_mismatches(requirements.read_text().splitlines()):
            log.warning("%s: %s", uri, problem)
    logged = (model.metadata.flavors.get("python_function") or {}).get("python_version")
    running = ".".join(platform.python_version_tuple()[:2])
    if logged and ".".join(str(logged).split(".")[:2]) != running:
        log.warning("%s was logged with Python %s; this is Python %s", uri, logged, running)
    return model


def requirement_mismatches(lines: list[str]) -> list[str]:
    """Each pip requirement (``name[extras] specifier ; marker``) the running environment does not satisfy."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # URLs, paths and editable installs: nothing to compare
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            problems.append(f"the model requires {line}, which is not installed")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"the model requires {line}, this environment has {req.name}=={have}")
    return problems
