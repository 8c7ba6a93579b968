"""The Python API: ``loopline.open(path, env=...)`` gives one environment with the loop's stages as methods.

Each method calls the same stage function as the CLI command of the same name and returns its result object
(which renders as an HTML table in a notebook). The jobs (ingest, train, batch, monitor, loop) run through
:func:`loopline.jobs.run_job` as ``loopline run JOB`` does: locked per job and recorded in ``runs``; errors are
the same :class:`~loopline.errors.LooplineError` subclasses, with their ``hint``::

    import loopline

    env = loopline.open("my-model", env="dev")
    env.ingest("history", month=3)
    result = env.train()          # TrainResult; env.promote() once result.gate.passed
    env.sql("select count(*) as n from predictions")
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline.errors import JobError, LooplineError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pandas as pd
    import pyarrow as pa

    from loopline.batch import BatchResult
    from loopline.config import Project
    from loopline.features import FeaturesResult
    from loopline.ingest import PipelineResult
    from loopline.loop import LoopResult
    from loopline.monitoring.monitor import MonitorResult
    from loopline.registry import CopyResult, RegistryEvent
    from loopline.replay import ReplayResult
    from loopline.status import StatusReport
    from loopline.tables import DeltaStore, TableInfo
    from loopline.training import TrainResult
    from loopline.validate import ValidationReport

Window = str | timedelta | None
"""A window length: ``"7d"``, ``"12h"``, ``"30m"`` or a timedelta."""


def open(path: str | Path | None = None, env: str | None = None) -> Environment:
    """The project at ``path`` (default: the nearest folder above the current one with a loopline.yaml) in
    environment ``env`` (default: the first under ``environments``).

    As the CLI does, the process then creates files 0600 and folders 0700 (umask 077), so the state stays
    private. A missing or invalid loopline.yaml is a :class:`~loopline.errors.ConfigError` naming the problem.
    """
    from loopline.config import load_project, private_state

    project = load_project(path, env)
    private_state()
    return Environment(project)


def _duration(window: Window, what: str = "window") -> timedelta | None:
    if window is None or isinstance(window, timedelta):
        return window
    from loopline.config import parse_duration

    try:
        return parse_duration(window)
    except ValueError:
        raise LooplineError(f"{what} must be a duration like 7d, 12h or 30m; got {window!r}") from None


def _when(value: datetime | str | None, what: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise LooplineError(f"{what} must be an ISO date or time like 2024-03-01T12:00; got {value!r}") from None


class Environment:
    """One environment of one project; the stages of the loop as methods, in loop order."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"<loopline {self.project.config.project!r} env={self.project.env!r} at {str(self.project.root)!r}>"

    @property
    def env(self) -> str:
        return self.project.env

    @property
    def root(self) -> Path:
        return self.project.root

    def _store(self) -> DeltaStore:
        from loopline.tables import DeltaStore

        return DeltaStore(self.project.storage_root, self.project.storage_options)

    def _job(self, name: str, **options: Any) -> Any:
        from loopline.jobs import run_job

        record = run_job(self.project, name, **options)
        if record.status == "skipped":
            raise JobError(record.error or f"job {name!r} was skipped", hint="wait for the running one to finish")
        return record.result

    # ------------------------------------------------------------------ data in
    def ingest(self, source: str | None = None, *, batch_id: str | None = None, **params: Any) -> PipelineResult:
        """ingest -> validate -> features for one batch of ``source`` (default: the first under ``sources``);
        ``params`` bind ``$name`` in a ``kind: sql`` source's query. Raises ValidationFailed (its ``report``
        attached) when the contract stops the batch."""
        options = {"source": source, "params": params or None, "batch_id": batch_id}
        return self._job("ingest", **options)  # type: ignore[no-any-return]

    def validate(self, batch_id: str) -> ValidationReport:
        """Re-validate a batch already in ``raw`` (quarantine and report replaced); ValidationFailed if it fails."""
        from loopline.ingest import reports_dir
        from loopline.validate import validate_batch

        p = self.project
        outcome = validate_batch(p.config.contract, self._store(), batch_id, root=p.root, reports_dir=reports_dir(p))
        outcome.rows.close()
        return outcome.report

    def build_features(self, batch_id: str) -> FeaturesResult:
        """Validate a ``raw`` batch again and (re)build its rows of ``features`` from the valid rows."""
        from loopline.features import build_features
        from loopline.ingest import reports_dir
        from loopline.validate import validate_batch

        p, store = self.project, self._store()
        outcome = validate_batch(p.config.contract, store, batch_id, root=p.root, reports_dir=reports_dir(p))
        try:
            return build_features(
                p.config.features, store, outcome.rows, batch_id, root=p.root, time_column=p.config.model.time_column
            )
        finally:
            outcome.rows.close()

    # ------------------------------------------------------------------ model
    def train(self, data_version: int | None = None) -> TrainResult:
        """Train on ``features`` (at ``data_version``, default latest), register and gate; a refusal by the gate
        is a result (``result.gate.passed`` is False), not an error."""
        return self._job("train", data_version=data_version)  # type: ignore[no-any-return]

    def promote(
        self,
        version: int | str | None = None,
        *,
        force: bool = False,
        reason: str | None = None,
        to: str | None = None,
    ) -> RegistryEvent | CopyResult:
        """Move ``@champion`` to the challenger (or ``version``); audited in ``registry_events``. ``to``: copy
        this environment's champion into environment ``to`` instead, gated on that environment's data."""
        from loopline import registry
        from loopline.errors import RegistryError

        if to is not None:
            if version is not None or force:
                raise RegistryError(
                    "promote(to=...) copies this environment's champion; version and force do not apply"
                )
            from loopline.config import load_project

            return registry.copy(self.project, load_project(self.project.root, to), reason=reason)
        return registry.promote(self.project, version=version, force=force, reason=reason)

    def rollback(self, reason: str | None = None) -> RegistryEvent:
        """Point ``@champion`` back to the previous champion recorded in the audit log."""
        from loopline import registry

        return registry.rollback(self.project, reason=reason)

    def retire(self, version: int | str, reason: str | None = None) -> list[RegistryEvent]:
        """Remove a version's aliases and tag it retired (it can no longer be promoted)."""
        from loopline import registry

        return registry.retire(self.project, version, reason=reason)

    def history(self, limit: int | None = None) -> list[RegistryEvent]:
        """The registry audit log of the environment's model, newest first."""
        from loopline import registry

        return registry.history(self.project, limit=limit, reconciled=True)

    # ------------------------------------------------------------------ predictions and monitoring
    def score(
        self, batch_id: str | None = None, *, engine: str | None = None, input_batch: str | None = None
    ) -> BatchResult:
        """Score the input table with ``@champion`` into ``predictions`` (``loopline run batch``)."""
        return self._job("batch", batch_id=batch_id, engine=engine, input_batch=input_batch)  # type: ignore[no-any-return]

    batch = score

    def monitor(
        self,
        window: Window = None,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        time: str | None = None,
    ) -> MonitorResult:
        """Drift, performance and range checks of one window (``result.verdict``: ok, breach or no_data)."""
        options = {"window": _duration(window), "since": _when(since, "since"), "until": _when(until, "until")}
        return self._job("monitor", time=time, **options)  # type: ignore[no-any-return]

    def loop(
        self,
        window: Window = None,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        scheduled: bool = False,
        time: str | None = None,
        **params: Any,
    ) -> LoopResult:
        """One turn of the loop: monitor; on a breach (or ``scheduled``) retrain, gate and promote. ``params``
        bind the retraining source's query."""
        options = {"window": _duration(window), "since": _when(since, "since"), "until": _when(until, "until")}
        return self._job("loop", scheduled=scheduled, params=params or None, time=time, **options)  # type: ignore[no-any-return]

    def replay(
        self,
        source: str | None = None,
        *,
        every: str | None = None,
        rows: int | None = None,
        initial: int | None = None,
        metric: str | None = None,
        policies: Sequence[str] = (),
        sets: Sequence[str] = (),
        serve: bool | None = None,
        params: dict[str, Any] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> ReplayResult:
        """Replay a labelled history through the real loop window by window (``loopline replay``); ``say``
        receives one progress line per window (default: silent)."""
        from loopline.replay import replay

        return replay(
            self.project,
            source=source,
            params=params,
            every=every,
            rows=rows,
            initial=initial,
            metric=metric,
            policies=policies,
            sets=sets,
            serve=serve,
            say=say or (lambda _line: None),
        )

    def status(self) -> StatusReport:
        """Champion, challenger, last runs, last monitoring verdict, review flag, tables."""
        from loopline.status import status

        return status(self.project)

    # ------------------------------------------------------------------ tables
    def sql(self, query: str, *, arrow: bool = False, timeout: float | None = 60) -> pd.DataFrame | pa.Table:
        """One read-only DuckDB statement over the environment's tables (the `loopline sql` sandbox); a pandas
        DataFrame, or a pyarrow Table with ``arrow=True``."""
        from loopline.tables import run_readonly_sql

        result = run_readonly_sql(self._store().sql(), query, timeout=timeout or None).read_all()
        return result if arrow else result.to_pandas()

    def table(self, name: str, *, version: int | None = None, arrow: bool = False) -> pd.DataFrame | pa.Table:
        """A whole table (at ``version``, default current) as a pandas DataFrame, or a pyarrow Table."""
        store = self._store()
        result = store.table(name, version=version).to_pyarrow_table()
        return result if arrow else result.to_pandas()

    def tables(self) -> list[TableInfo]:
        """Every table of the environment with its version, rows and size."""
        store = self._store()
        return [store.info(name) for name in store.names()]
