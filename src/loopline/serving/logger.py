"""The prediction log: every prediction the server returns lands in the ``inference_log`` table.

Off the request path: a request appends one entry to an in-memory buffer (a list append under a
lock). A background task flushes the buffer when it holds ``flush_rows`` rows or every
``flush_interval``: it builds the rows' Arrow table on the event loop, one column at a time with
requests served in between, and *stages* it in the spill folder (an Arrow file, written off the
loop). ``loopline serve`` runs a committer process beside the workers (``serving.committer``,
``serving.log.committer_process``) that commits staged files to the table; without one (or when it
is gone) one worker takes the committer's lock (``spill.SpillFolder``) and commits its own rows plus
the others' staged files (``commit.LogCommitter``). If a commit fails, the rows (already redacted)
stay in the spill folder and are committed, oldest first, at the next commit and at the next start.
If the buffer passes ``max_buffer_rows`` (the flush is slow, not failing), it is spilled at once,
counted in ``loopline_log_buffer_overflows`` and logged. ``close()`` (lifespan shutdown, after
uvicorn drained in-flight requests) stages what is left; the committer process, or the last worker
to close, commits everything staged, so a clean SIGTERM loses nothing.

Loss bound: a worker killed with SIGKILL loses the rows still in its memory buffer: those it answered
since its last flush, at most one ``flush_interval`` (plus the flush in progress). Staged files survive
any crash and are committed exactly once: each commit names its spill files in its metadata, and files
a killed committer had committed but not yet deleted are deleted, not committed again
(``commit.LogCommitter._already_committed``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.serving.commit import TABLE, LogCommitter
from loopline.serving.logrows import (
    BASE_COLUMNS,
    Entry,
    Redactor,
    build_steps,
    build_table,
    check_passthrough,
    logged_types,
    schema_conflicts,
)
from loopline.serving.spill import SpillFolder, alive

if TYPE_CHECKING:
    from loopline.config import LogConfig, Project
    from loopline.serving.metrics import LogMetrics
    from loopline.tables import DeltaStore

__all__ = ["BASE_COLUMNS", "COMMITTER_ENV", "TABLE", "Entry", "PredictionLogger", "Redactor"]

log = logging.getLogger("loopline.serving.log")
# set by `loopline serve` for its workers: the pid of the server's committer process
COMMITTER_ENV = "LOOPLINE_LOG_COMMITTER"
# at shutdown a worker that is not the committer waits this long (at least) for the committer's lock
FINAL_WAIT_SECONDS = 5.0


def spill_path(project: Project) -> Path:
    """The spill folder: ``serving.log.spill_dir``, by default ``<state>/spill``."""
    spill = project.config.serving.log.spill_dir
    return Path(project.resolve_path(spill)) if spill else project.state_dir / "spill"


def log_conflict_message(problems: list[str]) -> str:
    return (
        f"the existing {TABLE} table cannot take this server's rows: {'; '.join(problems)}. Every prediction "
        "would be set aside in spill/rejected/ (did serving.log.redact change since those rows were logged?)"
    )


class PredictionLogger:
    def __init__(
        self,
        store: DeltaStore,
        cfg: LogConfig,
        task: str,
        spill_dir: Path,
        metrics: LogMetrics,
        *,
        writer: Callable[[pa.Table], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.task = task
        self.folder = SpillFolder(spill_dir)
        self.metrics = metrics
        self.redactor = Redactor(cfg.redact, cfg.salt_env)
        self.committer = LogCommitter(store, cfg, self.folder, metrics, writer=writer)
        pid = os.environ.get(COMMITTER_ENV, "")
        self._committer_pid: int | None = int(pid) if pid.isdigit() else None
        self._buf: list[Entry] = []
        self._flushing: list[Entry] = []  # taken from the buffer, not yet staged or committed
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = asyncio.Lock()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_overflow_log = 0.0
        self.rows_staged = 0

    @property
    def rows_flushed(self) -> int:
        """Rows this worker committed itself (none while the server's committer process runs)."""
        return self.committer.rows_flushed

    # ------------------------------------------------------------------ request path
    def record(self, entry: Entry) -> None:
        n = len(entry.request_ids)
        with self._lock:
            self._buf.append(entry)
            self._rows += n
            rows = self._rows
        if rows >= self.cfg.flush_rows:
            self._wake()
        if rows > self.cfg.max_buffer_rows:
            self._overflow()

    def conflicts(self, columns: Mapping[str, str] | None = None) -> list[str]:
        """Why rows of this server (input ``columns``: name -> signature kind; ``serving.log.redact``) can
        never be committed to the existing ``inference_log``, read afresh; empty when they can."""
        schema = self.committer.table_schema(fresh=True)
        if schema is None:
            return []
        return schema_conflicts(schema, logged_types(columns or {}, self.redactor.rules))

    def check_keys(self, passthrough: dict[str, Any]) -> None:
        """Key values sent beside the inputs fit the log's columns (else InputError 422, nothing logged)."""
        if passthrough:  # redacted keys are stored hashed (text) or not at all: only their values are checked
            schema = self.committer.table_schema()
            if schema is not None and self.redactor.rules:
                schema = pa.schema([f for f in schema if f.name not in self.redactor.rules])
            check_passthrough(passthrough, schema)

    def buffered_ids(self, wanted: set[str]) -> set[str]:
        """Which of ``wanted`` are rows this worker has not staged or committed yet."""
        with self._lock:
            entries = [*self._buf, *self._flushing]
        found: set[str] = set()
        for e in entries:
            found.update(wanted.intersection(e.request_ids))
        return found

    def staged_ids(self, wanted: set[str]) -> set[str]:
        """Which of ``wanted`` are rows waiting in the spill folder (staged by any worker)."""
        return self.folder.request_ids(wanted) if wanted else set()

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def _wake(self) -> None:
        if self._event is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._event.set()
        else:
            self._loop.call_soon_threadsafe(self._event.set)

    def _take(self, flushing: bool = False) -> list[Entry]:
        """Empty the buffer; ``flushing``: the entries stay visible to ``buffered_ids`` until staged."""
        with self._lock:
            entries, self._buf, self._rows = self._buf, [], 0
            if flushing:
                self._flushing = entries
        return entries

    def _overflow(self) -> None:
        entries = self._take()
        if not entries:
            return
        rows = sum(len(e.request_ids) for e in entries)
        self.metrics.overflows.inc()
        now = time.monotonic()
        if now - self._last_overflow_log > 10:
            self._last_overflow_log = now
            log.warning(
                "prediction-log buffer passed serving.log.max_buffer_rows=%d (inference_log writes are too slow); "
                "spilling %d rows to %s",
                self.cfg.max_buffer_rows,
                rows,
                self.folder.path,
            )
        self.committer.spill(build_table(entries, self.task, self.redactor))
        self.metrics.buffer_rows.set(self._rows)

    # ------------------------------------------------------------------ background flush
    def _own_table(self, entries: list[Entry], built: pa.Table | None) -> pa.Table | None:
        """This worker's buffered rows (``built`` from ``entries``); requests whose rows can never fit the
        table (e.g. a new model version sends text where the log has numbers) are set aside, the rest go on."""
        if built is None or self.committer.misfit_of(built) is None:
            return built
        good: list[Entry] = []
        bad: list[Entry] = []
        for e in entries:
            (bad if self.committer.misfit_of(build_table([e], self.task, self.redactor)) else good).append(e)
        if bad:
            rows = build_table(bad, self.task, self.redactor)
            self.committer.set_aside(f"{rows.num_rows} rows of this worker", self.committer.misfit_of(rows) or "", rows)
        return build_table(good, self.task, self.redactor) if good else None

    def _process_commits(self) -> bool:
        """Whether the server's committer process is running (then this worker only stages)."""
        if self._committer_pid is None:
            return False
        if alive(self._committer_pid):
            return True
        log.warning(
            "the prediction-log committer process (pid %d) is gone; the workers commit the log themselves",
            self._committer_pid,
        )
        self._committer_pid = None
        return False

    def _may_lead(self) -> bool:
        return not self._process_commits() and self.folder.try_lead()

    def _stage(self, table: pa.Table) -> None:
        """Not the committer: leave the rows in the spill folder for the committer's next commit."""
        try:
            self.folder.put(table)
        except OSError as exc:  # the folder is unusable: write these rows directly (not the folder's)
            log.warning("cannot stage prediction-log rows in %s (%s); committing them directly", self.folder.path, exc)
            try:
                self.committer.write(table)
            except Exception as write_exc:
                self.metrics.flush_failures.inc()
                log.error("writing %d rows to %s failed; keeping them in memory: %s", table.num_rows, TABLE, write_exc)
                self.committer.pending.append(table)
            else:
                self.committer.flushed(table.num_rows)
            return
        self.metrics.staged.inc(table.num_rows)
        self.rows_staged += table.num_rows

    def _flush_sync(self, entries: list[Entry], built: pa.Table | None) -> None:
        self._deliver(self._own_table(entries, built))

    def _deliver(self, own: pa.Table | None) -> None:
        """Commit ``own`` (checked rows) if this worker is the committer, else stage it."""
        if self._may_lead():
            self.committer.commit(own)
            return
        pending = self.committer.pending
        for t in list(pending):  # rows an earlier failure kept in memory: to the folder, if it works now
            try:
                self.folder.put(t)
            except OSError:
                break
            pending.remove(t)
        if own is not None:
            self._stage(own)

    def _final_sync(self, entries: list[Entry], built: pa.Table | None) -> None:
        """Shutdown: stage or commit what is left. The committer process (it stops after the workers) or
        the last worker to close commits everything staged."""
        own = self._own_table(entries, built)
        if self._process_commits():
            self._deliver(own)
            return
        if not self.folder.try_lead():
            if own is not None:
                self._stage(own)
                own = None
            # the committer is closing too (it resigns after its last commit) or keeps running (and commits
            # these files at its next flush): wait for the lock a little, then leave the files to it
            wait = max(FINAL_WAIT_SECONDS, 2 * self.cfg.flush_interval.total_seconds())
            if not self.folder.lead(timeout=wait):
                log.info("staged prediction-log rows are left to the committing worker")
                return
        try:
            self.committer.commit(own)
        finally:
            self.folder.resign()

    async def _build(self, entries: list[Entry]) -> pa.Table | None:
        """The buffered rows as one table, built on the event loop one column at a time with requests
        served in between (on another thread each conversion would keep the GIL from the loop)."""
        if not entries:
            return None
        steps = build_steps(entries, self.task, self.redactor)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            await asyncio.sleep(0)

    async def flush(self) -> None:
        async with self._flush_lock:
            entries = self._take(flushing=True)
            self.metrics.buffer_rows.set(self._rows)
            try:
                built = await self._build(entries)
                await asyncio.to_thread(self._flush_sync, entries, built)
            finally:
                with self._lock:
                    self._flushing = []

    async def _run(self) -> None:
        assert self._event is not None
        interval = self.cfg.flush_interval.total_seconds()
        while not self._stopping:
            try:
                await asyncio.wait_for(self._event.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._event.clear()
            try:
                await self.flush()
            except Exception:  # the flusher must survive anything
                log.exception("prediction-log flush failed")
            self.metrics.buffer_rows.set(self._rows)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._event = asyncio.Event()
        # the first worker to start commits what an earlier run left
        await asyncio.to_thread(self._flush_sync, [], None)
        self._task = self._loop.create_task(self._run())

    async def close(self) -> None:
        """Stop the flusher and write everything still buffered (called after in-flight requests drained)."""
        self._stopping = True
        if self._task is not None and self._event is not None:
            self._event.set()
            await self._task  # lets a flush in progress finish
            self._task = None
        async with self._flush_lock:
            entries = self._take()
            self.metrics.buffer_rows.set(self._rows)
            built = await self._build(entries)
            await asyncio.to_thread(self._final_sync, entries, built)
        if self.committer.pending:
            log.critical(
                "%d prediction-log rows could be neither written nor spilled",
                sum(t.num_rows for t in self.committer.pending),
            )
