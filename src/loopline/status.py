"""`loopline status`: one read-only view of an environment, and the needs-review flag.

The report gathers, each part on its own and each saying "none" when absent (no registry yet, no
tables yet): the registered model with its ``champion`` and ``challenger`` versions and their gate
metrics (model-version tags; for classifiers the gate's per-class view, ``loopline.gate.per_class``),
the last run of each job (``runs`` table), the latest monitoring check (``monitoring`` table, with its
per-class precision / recall / F1, support and confusion matrix for classifiers), the needs-review flag
(registered-model tags) and the size of every table.

The needs-review flag is what the loop sets after too many refused candidates in a row
(:func:`set_needs_review`) and what a human lifts (`loopline review clear` -> :func:`clear_needs_review`).
While it is set, `loopline status` exits with :data:`EXIT_NEEDS_REVIEW` (12).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline import tracking
from loopline.display import repr_html
from loopline.errors import LooplineError, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from loopline.config import Project
    from loopline.jobs import RunRecord

NEEDS_REVIEW_TAG = "loopline.needs_review"
"""Registered-model tag: ``"true"`` while the environment needs human review."""
NEEDS_REVIEW_REASON_TAG = "loopline.needs_review_reason"
"""Registered-model tag: why review is needed (set with the flag)."""
NEEDS_REVIEW_SINCE_TAG = "loopline.needs_review_since"
"""Registered-model tag: when the flag was set (ISO 8601, UTC)."""
REVIEW_CLEARED_AT_TAG = "loopline.review_cleared_at"
"""Registered-model tag: when a human last cleared the flag (ISO 8601, UTC)."""
EXIT_NEEDS_REVIEW = 12
"""Exit code of `loopline status` (and `loopline loop`) while the environment needs human review."""

GATE_PREFIX = "loopline.gate."
PER_CLASS_TAG = GATE_PREFIX + "per_class"
MONITORING_TABLE = "monitoring"
CLASS_SLICE = "class="
PREDICTED = "predicted="
PER_CLASS_STATS = ("precision", "recall", "f1", "support")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
_RANK = {"no_data": 0, "ok": 1, "breach": 2}


# ----------------------------------------------------------------------------- report parts
@dataclass
class VersionStatus:
    """A model version holding an alias, with the gate result recorded on its tags."""

    alias: str
    version: str
    run_id: str | None
    created_at: datetime | None
    gate_verdict: str | None
    gate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    compared_with: str | None = None
    failed_rules: list[str] = field(default_factory=list)
    retired: bool = False
    per_class: dict[str, Any] = field(default_factory=dict)
    """Classifiers: the gate's per-class view on the test rows (classes, precision, recall, f1, support,
    confusion_matrix), from the ``loopline.gate.per_class`` tag; empty otherwise."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


@dataclass
class MonitoringStatus:
    """The latest monitoring check: overall verdict (``breach`` if any row breached) and what breached."""

    checked_at: datetime
    model_version: str | None
    verdict: str
    kinds: dict[str, str]
    breaches: list[dict[str, Any]]
    rows: int
    per_class: dict[str, Any] = field(default_factory=dict)
    """Classifiers: per class (label as text) precision / recall / F1 / support in the window, their verdicts,
    and the confusion matrix (rows: true, columns: predicted); empty when the check had no labelled rows."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checked_at"] = self.checked_at.isoformat()
        return d


@dataclass
class ReviewFlag:
    needed: bool
    reason: str | None = None
    since: str | None = None
    cleared_at: str | None = None


@dataclass
class StatusReport:
    """Everything `loopline status` shows; ``to_dict`` is its ``--json`` form."""

    _repr_html_ = repr_html  # the notebook view: loopline.display

    project: str
    env: str
    registered_model: str
    tracking_uri: str
    registry_exists: bool
    champion: VersionStatus | None
    challenger: VersionStatus | None
    runs: dict[str, RunRecord]
    monitoring: MonitoringStatus | None
    review: ReviewFlag
    tables: list[Any]  # loopline.tables.TableInfo
    storage_root: str = ""
    latest: VersionStatus | None = None
    """The newest version when it holds neither alias (e.g. a candidate the gate refused)."""

    @property
    def exit_code(self) -> int:
        return EXIT_NEEDS_REVIEW if self.review.needed else 0

    def _all_runs(self) -> dict[str, RunRecord | None]:
        """Every known job (None = never run), then any other job with a recorded run."""
        from loopline.jobs import JOB_FUNCTIONS

        return {**dict.fromkeys(JOB_FUNCTIONS), **self.runs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "env": self.env,
            "registered_model": self.registered_model,
            "tracking_uri": self.tracking_uri,
            "storage_root": self.storage_root,
            "registry_exists": self.registry_exists,
            "champion": self.champion.to_dict() if self.champion else None,
            "challenger": self.challenger.to_dict() if self.challenger else None,
            "latest": self.latest.to_dict() if self.latest else None,
            "runs": {job: _run_dict(r) if r else None for job, r in self._all_runs().items()},
            "monitoring": self.monitoring.to_dict() if self.monitoring else None,
            "needs_review": asdict(self.review),
            "tables": [_table_dict(t) for t in self.tables],
            "exit_code": self.exit_code,
        }


def _run_dict(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "job": r.job,
        "status": r.status,
        "started_at": r.started_at.isoformat(),
        "ended_at": r.ended_at.isoformat(),
        "duration_s": r.duration_s,
        "error": r.error,
        "pid": r.pid,
        "host": r.host,
    }


def _table_dict(t: Any) -> dict[str, Any]:
    d = asdict(t)
    d["last_write"] = t.last_write.isoformat() if t.last_write else None
    return d


# ----------------------------------------------------------------------------- MLflow access
safe_uri = tracking.safe_uri


def _unreachable(project: Project, exc: BaseException | str) -> LooplineError:
    return tracking.unreachable(project, exc)


def _registry_db_missing(project: Project) -> bool:
    """True for an embedded sqlite registry whose database file does not exist yet (nothing registered)."""
    uri = project.registry_uri
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///") :]
    return path not in ("", ":memory:") and not Path(path).exists()


def _check_server(project: Project) -> None:
    """Fail fast (instead of mlflow's minutes of retries) when the tracking server does not answer."""
    tracking.check_reachable(project)


def _client(project: Project) -> MlflowClient:
    _check_server(project)
    return tracking.client(project)


def _registered_tags(project: Project, c: MlflowClient) -> dict[str, str] | None:
    """The registered model's tags, or None when it does not exist (yet)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = c.get_registered_model(project.registered_model)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in _MISSING:
            return None
        raise _unreachable(project, exc.message) from None
    except Exception as exc:  # connection errors from SQLAlchemy / requests
        raise _unreachable(project, exc) from None
    return dict(rm.tags or {})


def _gate_floats(tags: dict[str, str], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in sorted(tags.items()):
        if k.startswith(prefix):
            try:
                out[k[len(prefix) :]] = float(v)
            except ValueError:
                continue
    return out


def _per_class_tag(tags: dict[str, str]) -> dict[str, Any]:
    """The gate's per-class view (JSON) of a version; {} when absent or unreadable (truncated at 5000 chars)."""
    raw = tags.get(PER_CLASS_TAG)
    if not raw:
        return {}
    try:
        view = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return view if isinstance(view, dict) and isinstance(view.get("classes"), list) else {}


def version_status(alias: str, mv: ModelVersion) -> VersionStatus:
    tags = dict(mv.tags or {})
    try:
        failed = json.loads(tags.get(GATE_PREFIX + "failed_rules", "[]"))
    except json.JSONDecodeError:
        failed = [tags[GATE_PREFIX + "failed_rules"]]
    created = (
        datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        if getattr(mv, "creation_timestamp", None)
        else None
    )
    return VersionStatus(
        alias=alias,
        version=str(mv.version),
        run_id=mv.run_id,
        created_at=created,
        gate_verdict=tags.get(GATE_PREFIX + "verdict"),
        gate_metrics=_gate_floats(tags, GATE_PREFIX + "candidate."),
        champion_metrics=_gate_floats(tags, GATE_PREFIX + "champion."),
        compared_with=tags.get(GATE_PREFIX + "champion_version") or None,
        failed_rules=[str(f) for f in failed] if isinstance(failed, list) else [str(failed)],
        retired=tags.get("loopline.retired") == "true",
        per_class=_per_class_tag(tags),
    )


def _latest(project: Project, c: MlflowClient) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        found = c.search_model_versions(
            f"name='{project.registered_model}'", order_by=["version_number DESC"], max_results=1
        )
    except MlflowException as exc:
        raise _unreachable(project, exc.message) from None
    return found[0] if found else None


def _alias(project: Project, alias: str) -> VersionStatus | None:
    try:
        mv = tracking.alias_version(project, alias)
    except RegistryError as exc:
        raise _unreachable(project, exc.message) from None
    return version_status(alias, mv) if mv is not None else None


# ----------------------------------------------------------------------------- needs-review flag
def _flag(tags: dict[str, str] | None) -> ReviewFlag:
    tags = tags or {}
    needed = tags.get(NEEDS_REVIEW_TAG, "").lower() == "true"
    return ReviewFlag(
        needed=needed,
        reason=tags.get(NEEDS_REVIEW_REASON_TAG) if needed else None,
        since=tags.get(NEEDS_REVIEW_SINCE_TAG) if needed else None,
        cleared_at=tags.get(REVIEW_CLEARED_AT_TAG),
    )


def review_flag(project: Project) -> ReviewFlag:
    """The environment's needs-review flag (not needed when there is no registered model yet)."""
    if _registry_db_missing(project):
        return ReviewFlag(needed=False)
    return _flag(_registered_tags(project, _client(project)))


def needs_review(project: Project) -> str | None:
    """Why the environment needs human review, or None when it does not (what the loop checks)."""
    flag = review_flag(project)
    if not flag.needed:
        return None
    return flag.reason or "flagged for review (no reason recorded)"


def set_needs_review(project: Project, reason: str) -> None:
    """Flag the environment for human review (registered-model tags); creates the registered model if needed."""
    from mlflow.exceptions import MlflowException

    c = _client(project)
    name = project.registered_model
    if _registered_tags(project, c) is None:
        try:
            c.create_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"cannot create registered model {name!r}: {exc.message}") from None
    try:
        c.set_registered_model_tag(name, NEEDS_REVIEW_TAG, "true")
        c.set_registered_model_tag(name, NEEDS_REVIEW_REASON_TAG, reason)
        c.set_registered_model_tag(name, NEEDS_REVIEW_SINCE_TAG, datetime.now(UTC).isoformat())
    except MlflowException as exc:
        raise RegistryError(f"cannot flag {name!r} for review: {exc.message}") from None


def clear_needs_review(project: Project) -> str | None:
    """Lift the needs-review flag; returns the reason it had (None when it was not set). Idempotent."""
    from mlflow.exceptions import MlflowException

    if _registry_db_missing(project):
        return None
    c = _client(project)
    name = project.registered_model
    flag = _flag(_registered_tags(project, c))
    if not flag.needed:
        return None
    try:
        for tag in (NEEDS_REVIEW_TAG, NEEDS_REVIEW_REASON_TAG, NEEDS_REVIEW_SINCE_TAG):
            try:
                c.delete_registered_model_tag(name, tag)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") not in _MISSING:
                    raise
        c.set_registered_model_tag(name, REVIEW_CLEARED_AT_TAG, datetime.now(UTC).isoformat())
    except MlflowException as exc:
        raise RegistryError(f"cannot clear the review flag of {name!r}: {exc.message}") from None
    return flag.reason or "flagged for review (no reason recorded)"


def review_cleared_at(project: Project) -> datetime | None:
    """When a human last cleared the flag (the loop counts refused candidates only after it), or None."""
    at = review_flag(project).cleared_at
    return datetime.fromisoformat(at) if at else None


# ----------------------------------------------------------------------------- tables, runs, monitoring
def _store(project: Project) -> Any:
    """The table store, or None when a local storage root does not exist yet (nothing written)."""
    from loopline.tables import DeltaStore

    root = project.storage_root
    if "://" not in root and not Path(root).is_dir():
        return None
    return DeltaStore(root, project.storage_options)


def latest_monitoring(store: Any) -> MonitoringStatus | None:
    """The rows of the most recent check in the ``monitoring`` table, summarised; None when there are none."""
    if store is None or not store.exists(MONITORING_TABLE):
        return None
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = store.dataset(MONITORING_TABLE)
    times = dataset.to_table(columns=["checked_at"]).column(0)
    if len(times) == 0 or times.null_count == len(times):
        return None
    last = pc.max(times)
    cols = [
        c
        for c in ("model_version", "kind", "feature", "slice", "statistic", "value", "threshold", "verdict")
        if c in dataset.schema.names
    ]
    rows = dataset.to_table(columns=cols, filter=ds.field("checked_at") == last).to_pylist()
    kinds: dict[str, str] = {}
    breaches: list[dict[str, Any]] = []
    for r in rows:
        kind, verdict = r.get("kind") or "?", r.get("verdict") or "no_data"
        if kind not in kinds or _RANK.get(verdict, 0) > _RANK.get(kinds[kind], 0):
            kinds[kind] = verdict
        if verdict == "breach":
            breaches.append({k: r.get(k) for k in ("kind", "feature", "slice", "statistic", "value", "threshold")})
    if breaches:
        overall = "breach"
    elif kinds.get("dataset_drift") != "no_data" and any(v == "ok" for v in kinds.values()):
        overall = "ok"
    else:
        overall = "no_data"  # no input rows were checked: never "ok"
    versions = [r.get("model_version") for r in rows if r.get("model_version")]
    return MonitoringStatus(
        checked_at=last.as_py(),
        model_version=versions[0] if versions else None,
        verdict=overall,
        kinds=kinds,
        breaches=breaches,
        rows=len(rows),
        per_class=monitoring_per_class(rows),
    )


def monitoring_per_class(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-class view of one monitoring check from its rows (``feature`` = ``per_class`` /
    ``confusion_matrix``, ``slice`` = ``class=<label>``; see docs/contracts.md); {} when it has none."""
    classes: list[str] = []
    stats: dict[str, dict[str, Any]] = {s: {} for s in PER_CLASS_STATS}
    verdicts: dict[str, dict[str, str]] = {s: {} for s in PER_CLASS_STATS}
    cells: dict[tuple[str, str], int] = {}
    for r in rows:
        feature, slice_, stat = r.get("feature"), r.get("slice") or "", r.get("statistic") or ""
        if r.get("kind") != "performance" or not slice_.startswith(CLASS_SLICE):
            continue
        label = slice_[len(CLASS_SLICE) :]
        if feature == "per_class" and stat in stats:
            if label not in classes:
                classes.append(label)
            stats[stat][label] = r.get("value")
            verdicts[stat][label] = r.get("verdict") or "no_data"
        elif feature == "confusion_matrix" and stat.startswith(PREDICTED):
            cells[(label, stat[len(PREDICTED) :])] = int(r.get("value") or 0)
    if not classes:
        return {}
    out: dict[str, Any] = {"classes": classes}
    for s in PER_CLASS_STATS:
        out[s] = [stats[s].get(c) for c in classes]
    out["support"] = [int(v) if v is not None else 0 for v in out["support"]]
    out["verdicts"] = {s: [verdicts[s].get(c, "no_data") for c in classes] for s in PER_CLASS_STATS[:3]}
    out["confusion_matrix"] = [[cells.get((t, p), 0) for p in classes] for t in classes]
    return out


def table_sizes(store: Any) -> list[Any]:
    if store is None:
        return []
    return [store.info(n) for n in store.names()]


# ----------------------------------------------------------------------------- the report
def status(project: Project) -> StatusReport:
    """Gather the environment's status; every absent part is None / empty, never an error.

    An MLflow tracking server (or database) that cannot be reached raises LooplineError naming its URI.
    """
    from loopline.jobs import last_runs

    champion = challenger = latest = None
    tags: dict[str, str] | None = None
    if not _registry_db_missing(project):
        c = _client(project)
        tags = _registered_tags(project, c)
        if tags is not None:
            champion = _alias(project, tracking.CHAMPION)
            challenger = _alias(project, tracking.CHALLENGER)
            newest = _latest(project, c)
            held = {v.version for v in (champion, challenger) if v is not None}
            if newest is not None and str(newest.version) not in held:
                latest = version_status("latest", newest)
    store = _store(project)
    return StatusReport(
        project=project.config.project,
        env=project.env,
        registered_model=project.registered_model,
        tracking_uri=safe_uri(project.tracking_uri),
        storage_root=project.storage_root,
        registry_exists=tags is not None,
        champion=champion,
        challenger=challenger,
        runs=last_runs(project) if store is not None else {},
        monitoring=latest_monitoring(store),
        review=_flag(tags),
        tables=table_sizes(store),
        latest=latest,
    )
