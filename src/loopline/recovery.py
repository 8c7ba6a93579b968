"""What a killed job leaves behind, cleaned up when the next job starts (:func:`recover`).

A job killed on the spot (SIGKILL, OOM killer, power loss) cannot record its own end. It leaves:

* its ``running`` row in the ``runs`` table: recorded as ``crashed`` (with why: its process is gone, or its
  heartbeat stopped) once :func:`loopline.jobs.crash_reason` says so;
* MLflow runs left ``RUNNING``: each run loopline creates is tagged with its process id, host and job run
  (:func:`loopline.jobs.run_tags`); a RUNNING run whose job crashed, or whose process is gone from this host,
  is terminated as ``FAILED`` (tag ``loopline.crashed`` says why);
* a model version registered by such a run before the gate recorded its verdict: tagged
  ``loopline.gate.verdict=ungated`` (and ``loopline.gate.ungated_reason``), shown as such by `loopline status`;
  `loopline promote` refuses it like any version that has not passed the gate (``--force --reason`` overrides).

Recovery never fails the job that starts: a problem is logged and the job runs.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopline.config import Project

log = logging.getLogger("loopline.recovery")
MLFLOW_JOBS = ("train", "loop")
"""Jobs that create MLflow runs: their start always looks for RUNNING runs of dead processes."""
UNGATED = "ungated"
VERDICT_TAG = "loopline.gate.verdict"
UNGATED_REASON_TAG = "loopline.gate.ungated_reason"
CRASHED_TAG = "loopline.crashed"


@dataclass
class Recovery:
    """What one :func:`recover` call found and recorded."""

    crashed_runs: list[str] = field(default_factory=list)
    failed_mlflow_runs: list[str] = field(default_factory=list)
    ungated_versions: list[str] = field(default_factory=list)


def recover(project: Project, job: str, *, mlflow: bool = True) -> Recovery:
    """Record crashed job runs, fail their MLflow runs, mark their gate-less versions ``ungated``."""
    out = Recovery()
    try:
        out.crashed_runs = mark_crashed_runs(project)
    except Exception as exc:
        log.warning("crashed runs not recorded: %s", exc)
    if mlflow and (out.crashed_runs or job in MLFLOW_JOBS):
        try:
            out.failed_mlflow_runs = fail_dead_mlflow_runs(project, set(out.crashed_runs))
            out.ungated_versions = mark_ungated(project, out.failed_mlflow_runs)
        except Exception as exc:
            log.warning("MLflow runs of crashed jobs not recovered: %s", exc)
    for what, items in vars(out).items():
        if items:
            log.warning("recovered after a crash: %s %s", what.replace("_", " "), ", ".join(items))
    return out


def mark_crashed_runs(project: Project) -> list[str]:
    """Rewrite the ``running`` rows of dead runs as ``crashed`` (with the reason); their run ids."""
    from loopline.jobs import _from_row, _store, crash_reason, update_run, utc_now

    store = _store(project)
    if not store.exists("runs"):
        return []
    import pyarrow.dataset as ds

    rows = store.read("runs", filter=ds.field("status") == "running").to_pylist()
    now, crashed = utc_now(), []
    for row in rows:
        record = _from_row(row)
        why = crash_reason(record, now)
        if why:
            update_run(project, replace(record, status="crashed", error=why), columns=("status", "error"))
            crashed.append(record.run_id)
    return crashed


def _tracking_db_missing(project: Project) -> bool:
    uri = project.tracking_uri
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists()


def fail_dead_mlflow_runs(project: Project, crashed_job_runs: set[str]) -> list[str]:
    """Terminate as FAILED the experiment's RUNNING runs of crashed jobs or of processes gone from this host."""
    import os

    from loopline import tracking
    from loopline.jobs import pid_alive

    if _tracking_db_missing(project):
        return []
    c = tracking.client(project)
    exp = c.get_experiment_by_name(f"/{project.config.project}/{project.env}")
    if exp is None:
        return []
    here, failed = socket.gethostname(), []
    for run in c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        pid = int(tags["loopline.pid"]) if tags.get("loopline.pid", "").isdigit() else None
        job_run = tags.get("loopline.job_run_id")
        if job_run in crashed_job_runs:
            why = f"its job run {job_run} crashed"
        elif pid and pid != os.getpid() and tags.get("loopline.host") == here and not pid_alive(pid):
            why = f"its process (pid {pid} on {here}) is gone"
        else:
            continue
        c.set_tag(run.info.run_id, CRASHED_TAG, why)
        c.set_terminated(run.info.run_id, "FAILED")
        failed.append(run.info.run_id)
    return failed


def mark_ungated(project: Project, run_ids: list[str]) -> list[str]:
    """Tag ``ungated`` every version of the registered model logged by these runs without a gate verdict."""
    from loopline import tracking

    if not run_ids:
        return []
    c = tracking.client(project)
    marked = []
    for rid in run_ids:
        for mv in c.search_model_versions(f"run_id = '{rid}'"):
            if mv.name != project.registered_model or VERDICT_TAG in (mv.tags or {}):
                continue
            c.set_model_version_tag(mv.name, str(mv.version), VERDICT_TAG, UNGATED)
            c.set_model_version_tag(
                mv.name, str(mv.version), UNGATED_REASON_TAG, f"run {rid} was killed before the gate recorded a verdict"
            )
            marked.append(f"{mv.name}/{mv.version}")
    return marked
