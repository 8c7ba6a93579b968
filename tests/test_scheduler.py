"""The scheduler: cron fire times on an injected clock, failures, stopping, signals, `loopline schedule`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from loopline.config import Project, load_project
from loopline.errors import ConfigError, JobError
from loopline.jobs import RunRecord, run_history
from loopline.scheduler import Scheduler, next_fire


class FakeClock:
    """Time moves only when the scheduler waits (or a job says it took a while)."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.waits: list[float] = []

    def now(self) -> datetime:
        return self.t

    def wait(self, seconds: float, stop: threading.Event) -> None:
        self.waits.append(seconds)
        self.t += timedelta(seconds=seconds)

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


T0 = datetime(2026, 3, 1, 23, 50, tzinfo=UTC)


@pytest.fixture
def project(project_dir: Path) -> Project:
    return load_project(project_dir, "dev")


def recorder(clock: FakeClock, calls: list[tuple[str, str]]) -> dict[str, Any]:
    def make(name: str) -> Any:
        def job(project: Project, **options: Any) -> str:
            calls.append((name, clock.now().strftime("%H:%M")))
            return f"{name} done"

        return job

    return {name: make(name) for name in ("ingest", "train", "batch", "monitor", "loop", "retention")}


def test_fires_the_right_jobs_at_the_right_cron_times(project: Project) -> None:
    clock = FakeClock(T0)
    calls: list[tuple[str, str]] = []
    seen: list[RunRecord] = []
    sched = Scheduler(
        project,
        schedules={"ingest": "*/15 * * * *", "train": "0 0 * * *", "monitor": "30 0 * * *"},
        functions=recorder(clock, calls),
        clock=clock,
        on_run=seen.append,
    )
    assert [(j.job, j.next_at.strftime("%d %H:%M")) for j in sched.plan()] == [
        ("ingest", "02 00:00"),
        ("train", "02 00:00"),
        ("monitor", "02 00:30"),
    ]

    assert sched.run(max_runs=8) == 8

    assert calls == [
        ("ingest", "00:00"),
        ("train", "00:00"),  # same tick: config order
        ("ingest", "00:15"),
        ("ingest", "00:30"),
        ("monitor", "00:30"),
        ("ingest", "00:45"),
        ("ingest", "01:00"),
        ("ingest", "01:15"),
    ]
    assert max(clock.waits) <= 60.0  # sleeps in bounded chunks
    assert [r.status for r in seen] == ["ok"] * 8
    history = run_history(project, limit=None)
    assert sorted((r.started_at.strftime("%H:%M"), r.job) for r in history) == sorted((t, j) for j, t in calls)
    assert all(r.started_at.tzinfo is not None and r.env == "dev" for r in history)
    assert next(j for j in sched.plan() if j.job == "train").next_at == datetime(2026, 3, 3, tzinfo=UTC)


def test_once_runs_only_the_next_tick(project: Project) -> None:
    clock = FakeClock(T0)
    calls: list[tuple[str, str]] = []
    sched = Scheduler(
        project,
        schedules={"monitor": "0 * * * *", "batch": "0 0 * * *", "train": "0 3 * * *"},
        functions=recorder(clock, calls),
        clock=clock,
    )
    assert sched.run(once=True) == 2
    assert calls == [("monitor", "00:00"), ("batch", "00:00")]


def test_a_failing_job_does_not_stop_the_scheduler(project: Project) -> None:
    clock = FakeClock(T0)

    def broken(project: Project) -> None:
        raise RuntimeError("disk on fire")

    sched = Scheduler(
        project,
        schedules={"train": "*/10 * * * *", "monitor": "*/20 * * * *"},
        functions={"train": broken, "monitor": lambda project: None},
        clock=clock,
    )
    assert sched.run(max_runs=5) == 5
    runs = sorted(run_history(project, limit=None), key=lambda r: (r.started_at, r.job))
    assert [(r.started_at.strftime("%H:%M"), r.job, r.status) for r in runs] == [
        ("00:00", "monitor", "ok"),
        ("00:00", "train", "failed"),
        ("00:10", "train", "failed"),
        ("00:20", "monitor", "ok"),
        ("00:20", "train", "failed"),
    ]
    assert runs[1].error == "RuntimeError: disk on fire"


def test_a_job_calling_sys_exit_is_a_failure_not_the_end(project: Project) -> None:
    clock = FakeClock(T0)

    def exits(project: Project) -> None:
        sys.exit(3)

    sched = Scheduler(project, schedules={"monitor": "*/10 * * * *"}, functions={"monitor": exits}, clock=clock)
    assert sched.run(max_runs=2) == 2
    assert [(r.status, r.error) for r in run_history(project)] == [("failed", "SystemExit: 3")] * 2


def test_missed_fire_times_coalesce_into_one_run(project: Project) -> None:
    clock = FakeClock(T0)
    calls: list[tuple[str, str]] = []
    functions = recorder(clock, calls)
    slow_train = functions["train"]

    def train(project: Project) -> Any:
        result = slow_train(project)
        clock.advance(minutes=50)  # runs over three of ingest's fire times
        return result

    functions["train"] = train
    sched = Scheduler(
        project, schedules={"train": "0 0 * * *", "ingest": "*/15 * * * *"}, functions=functions, clock=clock
    )
    assert sched.run(max_runs=4) == 4
    assert calls == [("train", "00:00"), ("ingest", "00:50"), ("ingest", "01:00"), ("ingest", "01:15")]


def test_stop_finishes_the_current_job_and_runs_no_more(project: Project) -> None:
    clock = FakeClock(T0)
    calls: list[tuple[str, str]] = []
    functions = recorder(clock, calls)
    sched: Scheduler

    def ingest(project: Project) -> str:
        sched.stop("test says stop")
        calls.append(("ingest", "finished"))
        return "ok"

    functions["ingest"] = ingest
    sched = Scheduler(
        project, schedules={"ingest": "0 0 * * *", "train": "0 0 * * *"}, functions=functions, clock=clock
    )
    assert sched.run() == 1
    assert calls == [("ingest", "finished")]
    assert sched.stop_reason == "test says stop"
    assert [r.status for r in run_history(project)] == ["ok"]


def test_sigterm_in_process_stops_after_the_current_job(project: Project) -> None:
    before = signal.getsignal(signal.SIGTERM)
    clock = FakeClock(T0)
    calls: list[tuple[str, str]] = []
    functions = recorder(clock, calls)

    def monitor(project: Project) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        calls.append(("monitor", "after signal"))
        return "ok"

    functions["monitor"] = monitor
    stops: list[str] = []
    sched = Scheduler(
        project,
        schedules={"monitor": "*/5 * * * *", "batch": "*/5 * * * *"},
        functions=functions,
        clock=clock,
        on_stop=stops.append,
    )
    assert sched.run(max_runs=10) == 1
    assert calls == [("monitor", "after signal")]
    assert stops == ["received SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_cron_is_read_in_the_given_time_zone(project: Project) -> None:
    clock = FakeClock(datetime(2026, 1, 10, 0, 0, tzinfo=UTC))
    calls: list[tuple[str, str]] = []
    sched = Scheduler(
        project,
        schedules={"batch": "0 3 * * *"},
        functions=recorder(clock, calls),
        clock=clock,
        tz=ZoneInfo("Europe/Berlin"),
    )
    sched.run(once=True)
    assert calls == [("batch", "02:00")]  # 03:00 in Berlin = 02:00 UTC in winter
    assert run_history(project)[0].started_at == datetime(2026, 1, 10, 2, 0, tzinfo=UTC)


def test_next_fire_is_strictly_after() -> None:
    at = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert next_fire("0 3 * * *", at) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


def test_invalid_cron_in_config_names_the_key(project_dir: Path) -> None:
    path = project_dir / "loopline.yaml"
    path.write_text(path.read_text() + "schedules:\n  train: '61 * * * *'\n  monitor: '0 * * * *'\n")
    with pytest.raises(ConfigError, match=r"schedules\.train must be a cron expression like '0 3 \* \* \*'"):
        load_project(project_dir, "dev")


def test_invalid_cron_passed_directly_names_the_key(project: Project) -> None:
    with pytest.raises(ConfigError, match=r"schedules\.loop must be a cron expression .*got 'every day'"):
        Scheduler(project, schedules={"loop": "every day"}, functions={"loop": lambda project: None})


def test_nothing_scheduled_is_an_error(project: Project) -> None:
    with pytest.raises(JobError, match=r"nothing to schedule: loopline.yaml has no `schedules:`"):
        Scheduler(project)


def test_an_unimportable_scheduled_job_fails_at_start(project: Project) -> None:
    with pytest.raises(JobError, match=r"job 'train': cannot import 'loopline_nope'"):
        Scheduler(project, schedules={"train": "0 * * * *"}, functions={"train": "loopline_nope:train_job"})


# ----------------------------------------------------------------------------- the real command
JOBS_MODULE = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    def slow(project, **options):
        Path(os.environ["MARKER"]).write_text("started")
        time.sleep(float(os.environ.get("SLOW_SECONDS", "1.0")))
        return "slow done"
    """
)
LAUNCH = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv.pop(1))
    import loopline.jobs
    loopline.jobs.JOB_FUNCTIONS["monitor"] = "scheduled_jobs:slow"
    from loopline.cli import main
    main()
    """
)


def _launch(
    project_dir: Path, tmp_path: Path, cron: str, *args: str, slow: float = 1.0
) -> tuple[subprocess.Popen[str], Path]:
    path = project_dir / "loopline.yaml"
    path.write_text(path.read_text() + f"schedules:\n  monitor: '{cron}'\n")
    mod_dir = tmp_path / "jobmods"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "scheduled_jobs.py").write_text(JOBS_MODULE)
    marker = tmp_path / "started.txt"
    env = {**os.environ, "MARKER": str(marker), "COLUMNS": "160", "SLOW_SECONDS": str(slow)}
    cmd = [sys.executable, "-c", LAUNCH, str(mod_dir), "schedule", "--project", str(project_dir), "--env", "dev", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), marker


@pytest.mark.timeout(60)
def test_sigterm_to_loopline_schedule_exits_0_after_the_running_job(project_dir: Path, tmp_path: Path) -> None:
    proc, marker = _launch(project_dir, tmp_path, "* * * * * *")  # every second
    try:
        for _ in range(300):
            if marker.exists() or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert marker.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGTERM: stopping after the current job" in err
    assert "monitor" in out and "* * * * * *" in out  # the plan table
    assert "scheduler stopped after 1 run(s) (received SIGTERM)" in out
    [record] = run_history(load_project(project_dir, "dev"))
    assert (record.job, record.status) == ("monitor", "ok")  # the running job finished and was recorded


@pytest.mark.timeout(60)
def test_sigint_while_sleeping_exits_0_at_once(project_dir: Path, tmp_path: Path) -> None:
    proc, _ = _launch(project_dir, tmp_path, "0 0 1 1 *")  # next run months away
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("next: monitor at ") and "-01-01 00:00:00 UTC" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "scheduler stopped after 0 run(s) (received SIGINT)" in out
    assert run_history(load_project(project_dir, "dev")) == []


@pytest.mark.timeout(60)
def test_max_runs_exits_after_n_runs(project_dir: Path, tmp_path: Path) -> None:
    proc, _ = _launch(project_dir, tmp_path, "* * * * * *", "--max-runs", "2", slow=0.0)
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 0, err
    assert out.count("slow done") == 2
    assert "scheduler stopped after 2 run(s)" in out


def test_cli_schedule_without_schedules(project_dir: Path, cli: Any) -> None:
    out = cli("schedule", "--project", str(project_dir), "--env", "dev")
    assert out.returncode == 1
    assert "nothing to schedule: loopline.yaml has no `schedules:`" in out.stderr
