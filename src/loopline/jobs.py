"""Jobs: the registry of runnable jobs, the runner that records every run, and the run history.

A job is a plain function ``fn(project: Project, **options) -> result`` named by a
``module:function`` string in :data:`JOB_FUNCTIONS`; it is imported only when it runs, so the CLI
stays fast. :func:`run_job` is what `loopline run JOB` and `loopline schedule` call:

* never two runs of the same job at once in the same environment: an exclusive, non-blocking
  ``flock`` on ``<state_dir>/locks/<job>.lock``; a held lock makes the run ``skipped`` (recorded,
  with the holder in ``error``). The kernel drops the lock when its process dies, so a crashed run
  never leaves a stale lock behind. The lock is per machine: two hosts sharing one object-store
  ``storage_root`` are not kept apart (use one scheduler, or an external orchestrator).
* every run - ok, failed or skipped - is one row of the ``runs`` Delta table (schema in
  docs/contracts.md), written **when the run starts**: a ``running`` row with the process id and host.
  A daemon thread moves its ``ended_at`` (= last seen alive) forward every
  ``LOOPLINE_HEARTBEAT_INTERVAL`` seconds (default 30; one small Delta merge), and the end of the run
  updates the same row (merge by ``run_id``) to its final status. A run killed on the spot (SIGKILL,
  power loss) keeps its ``running`` row: readers show it as ``crashed`` when its process is gone (same
  host) or its heartbeat is older than 4 intervals (any host), and the next job start records that
  (:mod:`loopline.recovery` also marks its MLflow runs FAILED and its gate-less model versions ``ungated``).
* an exception from the job is recorded (the LooplineError message, or ``Type: message``) and then
  re-raised by :func:`run_job`, so the CLI maps it to its exit code; :meth:`JobRunner.run` returns it
  on the record instead, which is what the scheduler wants.
"""

from __future__ import annotations

import contextvars
import dataclasses
import fcntl
import importlib
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from loopline.config import JobName
from loopline.errors import JobError, LooplineError

if TYPE_CHECKING:
    from loopline.config import Project

JOB_NAMES: tuple[str, ...] = get_args(JobName)
JOB_FUNCTIONS: dict[str, str] = {
    "ingest": "loopline.ingest:ingest_job",
    "train": "loopline.training:train_job",
    "batch": "loopline.batch:batch_job",
    "monitor": "loopline.monitoring.monitor:monitor_job",
    "loop": "loopline.loop:loop_job",
    "retention": "loopline.retention:retention_job",
}
"""Job name -> ``module:function``; each function is ``fn(project, **options) -> result``."""

RUNS_TABLE = "runs"
_TS = pa.timestamp("us", tz="UTC")
RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job", pa.string(), nullable=False),
        pa.field("env", pa.string(), nullable=False),
        pa.field("started_at", _TS, nullable=False),
        pa.field("ended_at", _TS, nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("pid", pa.int64(), nullable=True),
        pa.field("host", pa.string(), nullable=True),
    ]
)
MAX_ERROR_CHARS = 4000
HEARTBEAT_ENV = "LOOPLINE_HEARTBEAT_INTERVAL"
DEFAULT_HEARTBEAT_S = 30.0
STALE_BEATS = 4
"""A ``running`` row whose heartbeat is older than this many intervals is ``crashed``."""
log = logging.getLogger("loopline.jobs")
CURRENT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("loopline_job_run", default=None)
"""The ``runs.run_id`` of the job running in this context (tagged on the MLflow runs it creates)."""

Status = Literal["ok", "failed", "skipped", "running", "crashed"]
JobFunction = Callable[..., object]
Functions = Mapping[str, str | JobFunction]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunRecord:
    """One run of one job: a row of the ``runs`` table, plus (in memory only) its result or exception."""

    run_id: str
    job: str
    env: str
    started_at: datetime
    ended_at: datetime
    status: Status
    duration_s: float
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    result: object = field(default=None, compare=False, repr=False)
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in RUNS_SCHEMA.names}

    def summary(self) -> str:
        """One line: the result's summary when ok, the error otherwise."""
        if self.status == "ok":
            return describe_result(self.result)
        return (self.error or "").splitlines()[0] if self.error else ""


def heartbeat_interval() -> float:
    """Seconds between heartbeats of a running job (``LOOPLINE_HEARTBEAT_INTERVAL``, default 30)."""
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    except ValueError:
        return DEFAULT_HEARTBEAT_S
    return value if value > 0 else DEFAULT_HEARTBEAT_S


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def run_tags() -> dict[str, str]:
    """Tags for an MLflow run created by this process: pid, host and the job run (what recovery matches)."""
    tags = {"loopline.pid": str(os.getpid()), "loopline.host": socket.gethostname()}
    job_run = CURRENT_RUN.get()
    if job_run:
        tags["loopline.job_run_id"] = job_run
    return tags


def crash_reason(record: RunRecord, now: datetime, interval: float | None = None) -> str | None:
    """Why a ``running`` row is really a crashed run (its process is gone, or its heartbeat is stale); None
    while it looks alive."""
    if record.status != "running":
        return None
    where = f"pid {record.pid} on {record.host}" if record.pid else "its process"
    if record.pid and record.host == socket.gethostname() and not pid_alive(record.pid):
        return f"{where} is gone (killed or crashed; last heartbeat {record.ended_at:%Y-%m-%d %H:%M:%S} UTC)"
    stale = STALE_BEATS * (interval or heartbeat_interval())
    if (now - record.ended_at).total_seconds() > stale:
        return f"no heartbeat from {where} since {record.ended_at:%Y-%m-%d %H:%M:%S} UTC (> {stale:.0f} s)"
    return None


def as_seen(record: RunRecord, now: datetime | None = None) -> RunRecord:
    """The record as readers should show it: a ``running`` row of a dead process is ``crashed``."""
    why = crash_reason(record, now or utc_now())
    return dataclasses.replace(record, status="crashed", error=why) if why else record


def describe_result(result: object) -> str:
    """A short text for a job's result: its ``summary()``, its scalar dataclass fields, or ``str``."""
    if result is None:
        return ""
    summary = getattr(result, "summary", None)
    if callable(summary):
        return str(summary())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        parts = [
            f"{f.name}={getattr(result, f.name)}"
            for f in dataclasses.fields(result)
            if isinstance(getattr(result, f.name), (str, int, float, bool, type(None)))
        ]
        return " ".join(parts)
    text = str(result)
    return text if len(text) <= 200 else text[:197] + "..."


def error_message(exc: BaseException) -> str:
    """What the ``error`` column says: a LooplineError's message, else ``Type: message``."""
    if isinstance(exc, LooplineError):
        text = exc.message
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    else:
        text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def resolve_job(name: str, functions: Functions | None = None) -> JobFunction:
    """The callable behind a job name, imported now (and only now)."""
    registry = JOB_FUNCTIONS if functions is None else functions
    if name not in registry:
        raise JobError(f"unknown job {name!r}", hint=f"jobs: {', '.join(registry)}")
    ref = registry[name]
    if callable(ref):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobError(
            f"job {name!r}: cannot import {module_name!r} for {ref!r} ({exc})",
            hint="a missing optional dependency names its `pip install` line above",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise JobError(f"job {name!r}: module {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def check_options(name: str, fn: JobFunction, options: Mapping[str, Any]) -> None:
    """Raise JobError naming every option ``fn`` does not take (its first parameter is the project)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise JobError(
            f"job {name!r} has no option{'s' if len(unknown) > 1 else ''} {names}",
            hint=f"options of {name}: {', '.join(known) or '(none)'}",
        )


class JobLock:
    """An exclusive, non-blocking ``flock`` on ``<state_dir>/locks/<job>.lock`` (one job, one env)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_job(cls, project: Project, job: str) -> JobLock:
        return cls(project.state_dir / "locks" / f"{job}.lock")

    def acquire(self) -> bool:
        """Take the lock; False (immediately) when another process or thread holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now():%Y-%m-%d %H:%M:%S} UTC\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (best effort)."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"


class JobRunner:
    """Runs jobs of one project under their lock and appends one ``runs`` row per run."""

    def __init__(self, project: Project, *, functions: Functions | None = None, clock: Clock = utc_now) -> None:
        self.project = project
        self.functions = functions
        self.clock = clock

    def run(self, name: str, options: Mapping[str, Any] | None = None) -> RunRecord:
        """Run one job; failures are recorded and returned on the record (``record.exception``), not raised.

        A ``running`` row is written first and kept alive by a heartbeat; the final row replaces it. A job
        calling ``sys.exit()`` is a failure like any other (returned); KeyboardInterrupt is recorded as
        failed and re-raised. An unknown job name raises JobError (nothing is recorded); a failure to write
        the ``runs`` row raises TableError.
        """
        if name not in (JOB_FUNCTIONS if self.functions is None else self.functions):
            resolve_job(name, self.functions)  # raises JobError naming the known jobs
        fn: JobFunction | None = None
        try:
            fn = resolve_job(name, self.functions)
        except JobError:
            pass  # not importable: recorded as the run's failure below
        else:
            check_options(name, fn, options or {})  # an unknown option: JobError, nothing recorded
        run_id = uuid.uuid4().hex
        lock = JobLock.for_job(self.project, name)
        started = self._now()
        pid, host = os.getpid(), socket.gethostname()
        if not lock.acquire():
            reason = f"job {name!r} is already running in env {self.project.env!r} ({lock.holder()})"
            skipped = RunRecord(run_id, name, self.project.env, started, started, "skipped", 0.0, reason, pid, host)
            append_run(self.project, skipped)
            return skipped
        t0 = time.perf_counter()
        status: Status = "ok"
        result: object = None
        error: BaseException | None = None
        token = CURRENT_RUN.set(run_id)
        beat: Heartbeat | None = None
        try:
            running = RunRecord(run_id, name, self.project.env, started, started, "running", 0.0, None, pid, host)
            append_run(self.project, running)
            beat = Heartbeat(self.project, running, t0)
            from loopline.recovery import recover

            recover(self.project, name, mlflow=self.functions is None)
            fn = fn or resolve_job(name, self.functions)
            result = fn(self.project, **dict(options or {}))
        except BaseException as exc:  # recorded; KeyboardInterrupt is re-raised below
            status, error = "failed", exc
        finally:
            if beat is not None:
                beat.stop()
            CURRENT_RUN.reset(token)
            lock.release()
        record = RunRecord(
            run_id,
            name,
            self.project.env,
            started,
            self._now(),
            status,
            round(time.perf_counter() - t0, 6),
            error_message(error) if error is not None else None,
            pid,
            host,
            result,
            error,
        )
        finish_run(self.project, record)
        if error is not None and not isinstance(error, (Exception, SystemExit)):
            raise error
        return record

    def _now(self) -> datetime:
        now = self.clock()
        return now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)


class Heartbeat:
    """A daemon thread moving a ``running`` row's ``ended_at`` / ``duration_s`` forward every interval."""

    def __init__(self, project: Project, record: RunRecord, t0: float, interval: float | None = None) -> None:
        self.project, self.record, self.t0 = project, record, t0
        self.interval = interval or heartbeat_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"loopline-heartbeat-{record.job}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            alive = dataclasses.replace(
                self.record, ended_at=utc_now(), duration_s=round(time.perf_counter() - self.t0, 6)
            )
            try:
                update_run(self.project, alive, columns=("ended_at", "duration_s"))
            except Exception as exc:  # a missed beat is not a failed job
                log.warning("heartbeat of %s run %s not recorded: %s", self.record.job, self.record.run_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def run_job(project: Project, name: str, *, functions: Functions | None = None, **options: Any) -> RunRecord:
    """Run one job by hand (what `loopline run JOB` calls): recorded, locked, errors re-raised.

    A run skipped because the job is already running is returned (``status == "skipped"``), not raised.
    """
    record = JobRunner(project, functions=functions).run(name, options)
    if record.exception is not None:
        raise record.exception
    return record


# ----------------------------------------------------------------------------- run history
def _store(project: Project) -> Any:
    from loopline.tables import DeltaStore

    return DeltaStore(project.storage_root, project.storage_options)


def append_run(project: Project, record: RunRecord) -> None:
    """Append one row to the ``runs`` table (one Delta commit)."""
    table = pa.Table.from_pylist([record.row()], schema=RUNS_SCHEMA)
    _store(project).append(RUNS_TABLE, table, job=record.job, run_id=record.run_id)


def update_run(project: Project, record: RunRecord, columns: tuple[str, ...] | None = None) -> int:
    """Set ``columns`` (default: all) of the row with the record's ``run_id`` (one Delta merge, retried on a
    concurrent commit); returns the rows updated."""
    from loopline.errors import TableError

    table = pa.Table.from_pylist([record.row()], schema=RUNS_SCHEMA)
    cols = list(columns or [n for n in RUNS_SCHEMA.names if n != "run_id"])
    for attempt in range(5):
        try:
            return _store(project).update_matching(RUNS_TABLE, table, ["run_id"], cols)
        except TableError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    return 0


def finish_run(project: Project, record: RunRecord) -> None:
    """Replace the run's ``running`` row with its final state (appended when that row is missing)."""
    if update_run(project, record) == 0:
        append_run(project, record)


def _from_row(row: dict[str, Any]) -> RunRecord:
    return RunRecord(
        pid=row.get("pid"),
        host=row.get("host"),
        run_id=row["run_id"],
        job=row["job"],
        env=row["env"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        status=row["status"],
        duration_s=float(row["duration_s"]),
        error=row["error"],
    )


def run_history(
    project: Project, *, job: str | None = None, status: str | None = None, limit: int | None = 50
) -> list[RunRecord]:
    """Recorded runs, newest first (empty when nothing was recorded yet); a ``running`` row whose process is
    gone is returned as ``crashed`` (:func:`as_seen`)."""
    import pyarrow.dataset as ds

    store = _store(project)
    if not store.exists(RUNS_TABLE):
        return []
    flt: ds.Expression | None = None
    if job is not None:
        flt = ds.field("job") == job
    if status is not None and status not in ("running", "crashed"):
        cond = ds.field("status") == status
        flt = cond if flt is None else flt & cond
    names = store.schema(RUNS_TABLE).names
    table = store.read(RUNS_TABLE, columns=[n for n in RUNS_SCHEMA.names if n in names], filter=flt)
    table = table.sort_by([("started_at", "descending"), ("ended_at", "descending")])
    now = utc_now()
    records = [as_seen(_from_row(r), now) for r in table.to_pylist()]
    if status is not None:
        records = [r for r in records if r.status == status]
    return records[:limit] if limit is not None else records


def last_runs(project: Project) -> dict[str, RunRecord]:
    """The latest recorded run of each job (for `loopline status`), in registry order."""
    latest: dict[str, RunRecord] = {}
    for record in run_history(project, limit=None):
        latest.setdefault(record.job, record)
    order = {name: i for i, name in enumerate(JOB_FUNCTIONS)}
    return dict(sorted(latest.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
