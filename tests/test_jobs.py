"""The job runner: run history rows, per-job locks, error recording, `loopline runs`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loopline.config import Project, load_project
from loopline.errors import JobError, SourceError
from loopline.jobs import (
    JOB_FUNCTIONS,
    JOB_NAMES,
    RUNS_SCHEMA,
    Functions,
    JobLock,
    JobRunner,
    describe_result,
    last_runs,
    run_history,
    run_job,
)
from loopline.tables import DeltaStore


@dataclass
class Counted:
    rows: int
    table: str


class WithSummary:
    def summary(self) -> str:
        return "3 rows scored"


def ok_job(project: Project, **options: Any) -> Counted:
    return Counted(rows=int(options.get("rows", 7)), table="raw")


def source_missing(project: Project, **options: Any) -> None:
    raise SourceError("source 'points': data/points.csv does not exist", hint="check sources.points.path")


def plain_bug(project: Project, **options: Any) -> None:
    raise ValueError("bad value 42")


@pytest.fixture
def project(project_dir: Path) -> Project:
    return load_project(project_dir, "dev")


def store(project: Project) -> DeltaStore:
    return DeltaStore(project.storage_root, project.storage_options)


def test_registry_covers_every_job_name() -> None:
    assert set(JOB_FUNCTIONS) == set(JOB_NAMES) == {"ingest", "train", "batch", "monitor", "loop", "retention"}
    assert all(":" in ref for ref in JOB_FUNCTIONS.values())


def test_ok_run_is_one_row_with_the_contract_schema(project: Project) -> None:
    record = run_job(project, "ingest", functions={"ingest": ok_job}, rows=3)

    assert record.status == "ok" and record.error is None
    assert record.result == Counted(rows=3, table="raw")
    assert record.summary() == "rows=3 table=raw"
    assert record.ended_at >= record.started_at and record.duration_s >= 0
    table = store(project).read("runs")
    assert table.num_rows == 1
    assert table.schema.names == RUNS_SCHEMA.names
    assert [f.type for f in table.schema] == [f.type for f in RUNS_SCHEMA]
    assert table.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    row = table.to_pylist()[0]
    assert row["run_id"] == record.run_id and len(row["run_id"]) == 32
    assert (row["job"], row["env"], row["status"], row["error"]) == ("ingest", "dev", "ok", None)


def test_failed_run_records_the_loopline_message_then_reraises(project: Project) -> None:
    with pytest.raises(SourceError, match=r"source 'points': data/points.csv does not exist"):
        run_job(project, "ingest", functions={"ingest": source_missing})

    [record] = run_history(project)
    assert record.status == "failed"
    assert record.error == "source 'points': data/points.csv does not exist"  # message only, no hint


def test_failed_plain_exception_records_type_and_message(project: Project) -> None:
    record = JobRunner(project, functions={"train": plain_bug}).run("train")  # the runner returns, not raises

    assert record.status == "failed"
    assert record.error == "ValueError: bad value 42"
    assert isinstance(record.exception, ValueError)
    assert run_history(project)[0].error == "ValueError: bad value 42"


@pytest.mark.parametrize("job", sorted(JOB_FUNCTIONS))
def test_every_job_refuses_an_unknown_option_by_name_and_records_nothing(project: Project, job: str) -> None:
    """A misspelt option used to be swallowed by ``**_`` (a train run with ``data_verison=3`` trained on the
    latest data)."""
    with pytest.raises(JobError, match=rf"job '{job}' has no option 'data_verison'") as info:
        run_job(project, job, data_verison=3)
    assert info.value.hint is not None and info.value.hint.startswith(f"options of {job}:")
    assert run_history(project) == []


def test_unknown_options_are_all_named_with_the_known_ones(project: Project) -> None:
    with pytest.raises(JobError, match=r"job 'train' has no options 'fast', 'rows'") as info:
        run_job(project, "train", fast=True, rows=3, data_version=1)
    assert info.value.hint == "options of train: data_version"


def test_a_job_taking_any_keyword_is_not_checked(project: Project) -> None:
    assert run_job(project, "ingest", functions={"ingest": ok_job}, anything=1).status == "ok"


def test_unknown_job_is_refused_and_not_recorded(project: Project) -> None:
    with pytest.raises(JobError, match=r"unknown job 'nope'"):
        run_job(project, "nope")
    assert run_history(project) == []


def test_unimportable_job_is_recorded_as_failed(project: Project) -> None:
    functions = {"train": "loopline_no_such_module:train_job", "batch": "loopline.jobs:no_such_function"}
    with pytest.raises(JobError, match=r"job 'train': cannot import 'loopline_no_such_module'"):
        run_job(project, "train", functions=functions)
    with pytest.raises(JobError, match=r"job 'batch': module 'loopline.jobs' has no function 'no_such_function'"):
        run_job(project, "batch", functions=functions)
    assert [(r.job, r.status) for r in run_history(project)] == [("batch", "failed"), ("train", "failed")]


def test_sys_exit_in_a_hand_run_is_recorded_and_reraised(project: Project) -> None:
    def exits(project: Project) -> None:
        sys.exit(4)

    with pytest.raises(SystemExit) as info:
        run_job(project, "monitor", functions={"monitor": exits})
    assert info.value.code == 4
    assert run_history(project)[0].error == "SystemExit: 4"


def test_keyboard_interrupt_is_recorded_and_propagates(project: Project) -> None:
    def interrupted(project: Project) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        JobRunner(project, functions={"loop": interrupted}).run("loop")
    [record] = run_history(project)
    assert (record.status, record.error) == ("failed", "interrupted")
    assert JobLock.for_job(project, "loop").acquire()  # released on the way out


def test_lock_held_by_a_thread_skips_the_second_run(project: Project) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(project: Project) -> str:
        calls.append("slow")
        started.set()
        release.wait(10)
        return "done"

    functions: Functions = {"train": slow, "ingest": ok_job}
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(run_job(project, "train", functions=functions)))
    t.start()
    try:
        assert started.wait(10)
        second = run_job(project, "train", functions=functions)
        other = run_job(project, "ingest", functions=functions)  # another job is not blocked
    finally:
        release.set()
        t.join(10)

    assert calls == ["slow"]
    assert second.status == "skipped" and second.duration_s == 0.0
    assert second.error is not None
    assert second.error.startswith("job 'train' is already running in env 'dev' (pid ")
    assert other.status == "ok"
    assert results[0].status == "ok"
    statuses = sorted((r.job, r.status) for r in run_history(project))
    assert statuses == [("ingest", "ok"), ("train", "ok"), ("train", "skipped")]
    assert run_job(project, "train", functions={"train": ok_job}).status == "ok"  # lock released after the run


def test_lock_is_per_environment(project_dir: Path) -> None:
    dev, prod = load_project(project_dir, "dev"), load_project(project_dir, "prod")
    lock = JobLock.for_job(dev, "train")
    assert lock.acquire()
    try:
        assert run_job(prod, "train", functions={"train": ok_job}).status == "ok"
        assert run_job(dev, "train", functions={"train": ok_job}).status == "skipped"
    finally:
        lock.release()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from loopline.jobs import JobLock
    lock = JobLock(Path(sys.argv[1]))
    assert lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_lock_held_by_another_process_skips_and_dies_with_it(project: Project) -> None:
    path = JobLock.for_job(project, "monitor").path
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        calls: list[int] = []
        functions = {"monitor": lambda project: calls.append(1)}

        skipped = run_job(project, "monitor", functions=functions)
        assert skipped.status == "skipped" and calls == []
        assert f"(pid {holder.pid} on " in (skipped.error or "")

        os.kill(holder.pid, signal.SIGKILL)  # a crashed holder leaves the file, but no lock
        holder.wait(10)
        assert path.exists()
        assert run_job(project, "monitor", functions=functions).status == "ok"
        assert calls == [1]
    finally:
        holder.kill()
        holder.wait(10)
    assert [r.status for r in run_history(project, job="monitor")] == ["ok", "skipped"]


def test_history_filters_and_last_runs(project: Project) -> None:
    functions = {"ingest": ok_job, "train": plain_bug, "batch": ok_job}
    runner = JobRunner(project, functions=functions)
    first_ingest = runner.run("ingest")
    runner.run("train")
    last_ingest = runner.run("ingest")
    runner.run("batch")

    assert len(run_history(project)) == 4
    assert [r.run_id for r in run_history(project, job="ingest")] == [last_ingest.run_id, first_ingest.run_id]
    assert [r.job for r in run_history(project, status="failed")] == ["train"]
    assert len(run_history(project, limit=2)) == 2

    latest = last_runs(project)
    assert list(latest) == ["ingest", "train", "batch"]  # registry order
    assert latest["ingest"].run_id == last_ingest.run_id
    assert latest["train"].status == "failed"
    assert last_runs(load_project(project.root, "prod")) == {}


def test_describe_result() -> None:
    assert describe_result(None) == ""
    assert describe_result(WithSummary()) == "3 rows scored"
    assert describe_result(Counted(1, "raw")) == "rows=1 table=raw"
    assert describe_result("x" * 500).endswith("...")


def test_cli_runs(project: Project, cli: Any) -> None:
    root = str(project.root)
    empty = cli("runs", "--project", root, "--env", "dev")
    assert empty.returncode == 0, empty.stderr
    assert "no runs recorded in env 'dev' yet." in empty.stdout

    run_job(project, "ingest", functions={"ingest": ok_job})
    with pytest.raises(SourceError):
        run_job(project, "train", functions={"train": source_missing})

    out = cli("runs", "--project", root, "--env", "dev")
    assert out.returncode == 0, out.stderr
    assert "ingest" in out.stdout and "train" in out.stdout
    assert "failed" in out.stdout and "does not exist" in out.stdout

    only = cli("runs", "--project", root, "--env", "dev", "--job", "ingest")
    assert only.returncode == 0 and "ingest" in only.stdout and "train" not in only.stdout

    bad = cli("runs", "--project", root, "--job", "nope")
    assert bad.returncode == 2
    assert "must be one of ingest, train, batch, monitor, loop, retention, got 'nope'" in bad.stderr


def test_every_real_job_resolves() -> None:
    """Each job the scheduler can run points at a function that exists (checked before any schedule starts)."""
    from loopline.jobs import JOB_FUNCTIONS, resolve_job

    for name in JOB_FUNCTIONS:
        assert callable(resolve_job(name)), name


def test_sigkilled_train_is_crashed_its_mlflow_run_failed_and_its_version_ungated(tmp_path: Path, cli: Any) -> None:
    """SIGKILL of a job used to leave no trace (the runs row was written at the end); now its `running` row
    turns `crashed`, and the next job start fails its MLflow run and marks the gate-less version `ungated`."""
    import json
    import time

    from _lifecycle import make_project
    from _support import VENV_BIN
    from loopline import registry, tracking
    from loopline.errors import RegistryError

    p = make_project(tmp_path / "proj")
    root = str(p.root)
    env = {**os.environ, "LOOPLINE_TEST_PAUSE_AFTER": "registered", "LOOPLINE_HEARTBEAT_INTERVAL": "0.5"}
    train = subprocess.Popen(
        [str(VENV_BIN / "loopline"), "run", "train", "--project", root],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert train.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "paused after registered" not in train.stderr.readline():
            assert train.poll() is None, "train ended before the pause point"
        time.sleep(1.5)  # a few heartbeats
        [running] = run_history(p)
        assert (running.status, running.pid, running.job) == ("running", train.pid, "train")
        assert running.duration_s > 0.4, "the heartbeat moved the row forward"
        os.kill(train.pid, signal.SIGKILL)
        assert train.wait(10) == -signal.SIGKILL
    finally:
        train.kill()
        train.wait(10)

    out = cli("runs", "--json", "--project", root)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["job"], row["status"], row["pid"]) == ("train", "crashed", train.pid)
    assert f"pid {train.pid} on " in row["error"] and "is gone" in row["error"]
    status = json.loads(cli("status", "--json", "--project", root).stdout)
    assert status["runs"]["train"]["status"] == "crashed"
    c = tracking.client(p)
    [mv] = c.search_model_versions("name = 'dev.demo'")
    assert c.get_run(mv.run_id).info.status == "RUNNING"  # left behind by the killed process

    nxt = cli("run", "monitor", "--project", root)  # any job start recovers (monitor then fails: no champion)
    assert nxt.returncode != 0
    assert c.get_run(mv.run_id).info.status == "FAILED"
    assert c.get_run(mv.run_id).data.tags["loopline.crashed"] == f"its job run {row['run_id']} crashed"
    tags = c.get_model_version("dev.demo", "1").tags
    assert tags["loopline.gate.verdict"] == "ungated"
    assert [(r.job, r.status) for r in run_history(p)] == [("monitor", "failed"), ("train", "crashed")]
    raw = store(p).read("runs").to_pylist()
    assert {r["status"] for r in raw} == {"failed", "crashed"}, "the crash is recorded, not only derived"
    status = json.loads(cli("status", "--json", "--project", root).stdout)
    assert status["latest"]["version"] == "1" and status["latest"]["gate_verdict"] == "ungated"
    with pytest.raises(RegistryError, match=r"version 1 of dev.demo has not passed the gate \(verdict: ungated\)"):
        registry.promote(p, version=1)
    assert registry.promote(p, version=1, force=True, reason="checked by hand").gate_verdict == "ungated"


def test_a_running_row_of_another_host_is_crashed_once_its_heartbeat_is_stale(project: Project) -> None:
    from datetime import timedelta

    from loopline.jobs import RunRecord, append_run, utc_now

    now = utc_now()
    for run_id, beat in (("fresh", now), ("stale", now - timedelta(minutes=10))):
        append_run(project, RunRecord(run_id, "loop", "dev", beat, beat, "running", 1.0, None, 123, "elsewhere"))
    seen = {r.run_id: r for r in run_history(project)}
    assert seen["fresh"].status == "running"
    assert seen["stale"].status == "crashed"
    assert (seen["stale"].error or "").startswith("no heartbeat from pid 123 on elsewhere since ")
    assert [r.run_id for r in run_history(project, status="crashed")] == ["stale"]
