"""MLflow wiring for one environment: tracking/registry URIs, the experiment, the champion alias.

mlflow is imported inside the functions so that importing loopline stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from loopline.compat import require
from loopline.errors import LooplineError, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

    from loopline.config import Project
    from loopline.context import Context

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


def prepare(project: Project) -> None:
    """What comes before the first client of an environment: the servers answer (:func:`check_reachable`), a
    local sqlite database has its folder and its own artifact locations (:func:`relocate`)."""
    check_reachable(project)
    if project.tracking_uri.startswith("sqlite:///"):
        project.state_dir.mkdir(parents=True, exist_ok=True)
        relocate(project)


def client(project: Project) -> MlflowClient:
    """The environment's MLflow client (of its :class:`~loopline.context.Context`), bound to its tracking and
    registry URIs explicitly: MLflow's process-global URIs are neither read nor changed."""
    from loopline.context import context

    if project.tracking_uri.startswith("sqlite:///"):
        project.state_dir.mkdir(parents=True, exist_ok=True)  # a state folder removed since the Context was built
    return context(project).client


_BOUND = threading.RLock()


@contextlib.contextmanager
def bound(project: Project) -> Iterator[None]:
    """MLflow's process-global tracking and registry URIs pointed at ``project``'s environment for the block,
    and the caller's own URIs (and ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``) restored on exit.

    Why it exists: logging a model (``mlflow.<flavor>.log_model``) and the runs around it (``mlflow.start_run``,
    ``log_input``, nested search trials) only exist in MLflow's "fluent" form, which writes to the active run
    of the global tracking URI and registers through the global registry URI. Everything else in loopline uses
    the Context's client, bound explicitly. The block holds a process lock, so two threads (two environments)
    cannot interleave their URIs; the caller's active run, if any, is set aside for the block (loopline's runs
    are never nested under a notebook's run) and given back after. A thread that uses MLflow's fluent API
    outside loopline while another thread trains sees loopline's URIs for that time: MLflow's globals are
    global."""
    import mlflow

    from loopline.context import context

    ctx = context(project)
    with _BOUND:
        saved = _save_globals()
        try:
            mlflow.set_tracking_uri(ctx.tracking_uri)
            mlflow.set_registry_uri(ctx.registry_uri)
            yield
        finally:
            _restore_globals(saved)


_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _save_globals() -> dict[str, Any]:
    """The caller's MLflow globals: the URIs as set (None when never set: MLflow then resolves them from the
    environment and its defaults, and must keep doing so), the two environment variables, the thread's active
    run stack and last run / logged model (MLflow keeps these in module state; see :func:`bound`)."""
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved: dict[str, Any] = {
        "tracking": tracking_utils._tracking_uri,
        "registry": registry_utils._registry_uri,
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
    }
    for name in _FLUENT_STATE:
        var = getattr(fluent, name, None)
        if var is not None:
            value = var.get()
            saved[name] = list(value) if isinstance(value, list) else value
            var.set([] if isinstance(value, list) else None)
    return saved


_FLUENT_STATE = ("_active_run_stack", "_last_active_run_id", "_last_logged_model_id")


def _restore_globals(saved: dict[str, Any]) -> None:
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils

    mlflow.set_tracking_uri(saved["tracking"])  # None is MLflow's "not set" (it also resets the tracer)
    registry_utils._registry_uri = saved["registry"]  # set_registry_uri(None) would keep the variable set
    for k, v in saved["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for name in _FLUENT_STATE:
        var = getattr(fluent, name, None)
        if var is not None and name in saved:
            var.set(saved[name])


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


def download_uri(c: MlflowClient, uri: str) -> str:
    """Where the artifacts of ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` are stored, resolved
    with ``c`` (its registry, never MLflow's global one); any other URI as it is."""
    if not uri.startswith("models:/"):
        return uri
    ref = uri.removeprefix("models:/")
    if "@" in ref.split("/", 1)[0]:
        name, rest = ref.split("@", 1)
        alias, _, sub = rest.partition("/")
        version = str(c.get_model_version_by_alias(name, alias).version)
    else:
        name, version, *path = ref.split("/")
        sub = "/".join(path)
    location = c.get_model_version_download_uri(name, version)
    return f"{location.rstrip('/')}/{sub}" if sub else location


def download(ctx: Context, uri: str, dst_path: str | None = None) -> str:
    """The artifacts at ``uri`` (a ``models:/`` URI resolved by :func:`download_uri`) as a local folder, read
    through the Context's tracking and registry URIs (a local artifact store: its own folder, nothing copied)."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(
        artifact_uri=download_uri(ctx.client, uri),
        dst_path=dst_path,
        tracking_uri=ctx.tracking_uri,
        registry_uri=ctx.registry_uri,
    )


def load_model(uri: str, ctx: Context | None = None) -> PyFuncModel:
    """``mlflow.pyfunc.load_model`` of ``uri`` (a ``models:/`` URI resolved with the environment's Context,
    else a local path) without MLflow's own requirement check, which maps every installed distribution to its modules
    (~1 s per load); :func:`requirement_mismatches` checks the model's ``requirements.txt`` against the
    installed versions instead and each mismatch is logged as a warning."""
    import mlflow.pyfunc

    if ctx is None:
        if ":/" in uri:
            raise ValueError(f"loading {uri} needs the environment's Context (its MLflow URIs)")
        local = uri
    else:
        local = download(ctx, uri)
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
