"""`loopline schedule`: run the jobs of ``schedules:`` at their cron times, in the foreground.

How it runs:

* At start every scheduled job must resolve to its function (a job that cannot be imported is an
  error now, not at 3 a.m.), and its next fire time is computed with croniter in ``tz`` (UTC by default).
* The scheduler sleeps until the earliest fire time (in chunks of at most ``max_sleep`` seconds, so a
  wall-clock jump or a suspended laptop is noticed), then runs every due job **one at a time**, in
  fire-time order (ties: config order), through :class:`~loopline.jobs.JobRunner`: each run is locked
  and recorded in ``runs``. Sequential runs keep jobs that touch the same tables (train, loop, batch)
  from racing; the per-job lock additionally keeps a hand-run `loopline run JOB` or a second scheduler
  from overlapping with this one.
* A job that fails is recorded and the scheduler carries on. Fire times missed while another job ran
  coalesce into one run, as soon as possible; there is no backlog. After a run, the job's next fire
  time is computed from the time it finished.
* SIGINT / SIGTERM: the first stops the scheduler cleanly after the job in progress (or at once when
  sleeping) and :meth:`Scheduler.run` returns; a second one interrupts the running job
  (KeyboardInterrupt, recorded as failed).
* The clock is injectable (:class:`Clock`), so tests drive hours of schedule in milliseconds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from loopline.errors import ConfigError, JobError, LooplineError
from loopline.jobs import Functions, JobRunner, RunRecord, resolve_job

if TYPE_CHECKING:
    from loopline.config import Project


class Clock(Protocol):
    """Where the scheduler reads the time and how it waits."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Wait up to ``seconds``; return early once ``stop`` is set."""
        ...


class SystemClock:
    """The real clock: UTC now, and an interruptible sleep."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(max(0.0, seconds))


@dataclass
class ScheduledJob:
    job: str
    cron: str
    next_at: datetime


def next_fire(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` matching ``cron`` (in ``after``'s timezone)."""
    from croniter import croniter

    return croniter(cron, after).get_next(datetime)  # type: ignore[no-any-return]


class Scheduler:
    """Runs scheduled jobs of one project/environment until stopped, ``once``, or ``max_runs``."""

    def __init__(
        self,
        project: Project,
        *,
        schedules: Mapping[str, str] | None = None,
        functions: Functions | None = None,
        clock: Clock | None = None,
        tz: tzinfo = UTC,
        on_run: Callable[[RunRecord], None] | None = None,
        on_error: Callable[[str, LooplineError], None] | None = None,
        on_stop: Callable[[str], None] | None = None,
        on_wait: Callable[[ScheduledJob], None] | None = None,
        max_sleep: float = 60.0,
    ) -> None:
        from croniter import croniter

        self.project = project
        self.clock: Clock = clock or SystemClock()
        self.tz = tz
        self.on_run = on_run
        self.on_error = on_error
        self.on_stop = on_stop
        self.on_wait = on_wait
        self.max_sleep = max_sleep
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        plan = dict(project.config.schedules if schedules is None else schedules)
        if not plan:
            raise JobError(
                f"nothing to schedule: {project.config_path.name} has no `schedules:`",
                hint="add cron expressions per job, e.g.\nschedules:\n  monitor: '0 * * * *'\n  train: '0 3 * * 0'",
            )
        for job, cron in plan.items():
            if not croniter.is_valid(cron):
                raise ConfigError(f"schedules.{job} must be a cron expression like '0 3 * * *', got {cron!r}")
            resolve_job(job, functions)  # fail at start, not at fire time
        self.runner = JobRunner(project, functions=functions, clock=self.clock.now)
        now = self._now()
        self.jobs = [ScheduledJob(job, cron, next_fire(cron, now)) for job, cron in plan.items()]

    # ------------------------------------------------------------------ control
    def plan(self) -> list[ScheduledJob]:
        """The scheduled jobs with their next fire times, soonest first."""
        return sorted((ScheduledJob(j.job, j.cron, j.next_at) for j in self.jobs), key=lambda j: j.next_at)

    def stop(self, reason: str = "stop requested") -> None:
        """Stop after the job in progress (thread- and signal-safe)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
            if self.on_stop:
                self.on_stop(reason)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ loop
    def run(self, *, once: bool = False, max_runs: int | None = None, handle_signals: bool = True) -> int:
        """Run until stopped; ``once``: only the jobs due at the next tick; ``max_runs``: at most N runs.

        Returns the number of runs started (ok, failed and skipped alike).
        """
        runs = 0
        with self._signals(handle_signals):
            while not self.stopping and (max_runs is None or runs < max_runs):
                upcoming = min(self.jobs, key=lambda j: j.next_at)
                if self.on_wait:
                    self.on_wait(upcoming)
                if not self._sleep_until(upcoming.next_at):
                    break
                now = self._now()
                for sj in sorted((j for j in self.jobs if j.next_at <= now), key=lambda j: j.next_at):
                    if self.stopping or (max_runs is not None and runs >= max_runs):
                        break
                    self._run_one(sj.job)
                    runs += 1
                    sj.next_at = next_fire(sj.cron, max(self._now(), sj.next_at))
                if once:
                    break
        return runs

    def _run_one(self, job: str) -> RunRecord | None:
        try:
            record = self.runner.run(job)
        except LooplineError as exc:  # e.g. the runs row could not be written: report, keep scheduling
            if self.on_error:
                self.on_error(job, exc)
            return None
        if self.on_run:
            self.on_run(record)
        return record

    def _sleep_until(self, when: datetime) -> bool:
        """Sleep until ``when``; False when stopped first."""
        while not self.stopping:
            remaining = (when - self._now()).total_seconds()
            if remaining <= 0:
                return True
            self.clock.wait(min(remaining, self.max_sleep), self._stop)
        return False

    def _now(self) -> datetime:
        return self.clock.now().astimezone(self.tz)

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        """SIGINT/SIGTERM -> stop after the current job; a second one -> KeyboardInterrupt."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stopping:
                raise KeyboardInterrupt
            self.stop(f"received {signal.Signals(signum).name}")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
