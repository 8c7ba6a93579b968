"""The prediction log: every prediction the server returns lands in the ``inference_log`` table.

Off the request path: a request appends one entry to an in-memory buffer (a list append under a
lock). A background task flushes the buffer when it holds ``flush_rows`` rows or every
``flush_interval``. One worker of the server is the committer (``spill.SpillFolder``): it commits its
own rows plus the files the other workers staged in the spill folder, as one Delta commit; the other
workers only stage. If the commit fails, the rows (already redacted) stay in, or go to, the spill
folder and are committed, oldest first, at the next flush and at the next start. If the buffer passes
``max_buffer_rows`` (the table is slow, not failing), it is spilled at once, counted in
``loopline_log_buffer_overflows`` and logged. ``close()`` (lifespan shutdown, after uvicorn drained
in-flight requests) flushes what is left; the last worker to close commits everything staged, so a
clean SIGTERM loses nothing.

Commits are at-least-once: a crash between a successful commit and deleting its staged files would
commit those rows twice (``request_id`` identifies them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.serving.logrows import BASE_COLUMNS, Entry, Redactor, build_table, conform, misfit, yield_gil
from loopline.serving.spill import SpillFolder

if TYPE_CHECKING:
    from loopline.config import LogConfig
    from loopline.serving.metrics import Metrics
    from loopline.tables import DeltaStore

__all__ = ["BASE_COLUMNS", "TABLE", "Entry", "PredictionLogger", "Redactor"]

log = logging.getLogger("loopline.serving.log")
TABLE = "inference_log"
# compaction merges files up to this size and then leaves them alone: each compaction rewrites at most
# this much (one core, off the event loop), however large the log grows
COMPACT_FILE_BYTES = 32 * 1024 * 1024
# at shutdown a worker that is not the committer waits this long (at least) for the committer's lock
FINAL_WAIT_SECONDS = 5.0


class PredictionLogger:
    def __init__(
        self,
        store: DeltaStore,
        cfg: LogConfig,
        task: str,
        spill_dir: Path,
        metrics: Metrics,
        *,
        writer: Callable[[pa.Table], Any] | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.task = task
        self.spill_dir = spill_dir
        self.folder = SpillFolder(spill_dir)
        self.metrics = metrics
        self.redactor = Redactor(cfg.redact, cfg.salt_env)
        self._appender = store.appender(TABLE, writer="loopline.serving", pid=os.getpid())
        self._append = writer or self._appender
        self._writes_elsewhere = writer is not None  # a custom writer (tests): the store is not the target
        self._schema: pa.Schema | None = None
        self._buf: list[Entry] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = asyncio.Lock()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_overflow_log = 0.0
        self._pending: list[pa.Table] = []  # tables that could be neither written nor spilled
        self.rows_flushed = 0
        self._commits = 0  # this worker's commits since the last compaction

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

    def buffered_ids(self, wanted: set[str]) -> set[str]:
        with self._lock:
            entries = list(self._buf)
        found: set[str] = set()
        for e in entries:
            found.update(wanted.intersection(e.request_ids))
        return found

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

    def _take(self) -> list[Entry]:
        with self._lock:
            entries, self._buf, self._rows = self._buf, [], 0
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
                self.spill_dir,
            )
        self._spill(build_table(entries, self.task, self.redactor))
        self.metrics.buffer_rows.set(self._rows)

    # ------------------------------------------------------------------ writing
    def _table_schema(self) -> pa.Schema | None:
        if self._schema is None and self.store.exists(TABLE):
            try:
                self._schema = self.store.schema(TABLE)
            except Exception:
                self._schema = None
        return self._schema

    def _write(self, table: pa.Table) -> None:
        """One commit; columns the table already has are cast to its types (a new model version may
        send an int where the log has a float)."""
        schema = self._table_schema()
        if schema is not None:
            table = conform(table, schema)
        try:
            self._append(table)
        except Exception:
            self._schema = None  # re-read next time
            raise

    def _combine(self, parts: list[pa.Table]) -> pa.Table | None:
        """Several tables as one (columns unified by name; missing ones null); None if they do not fit."""
        if len(parts) == 1:
            return parts[0]
        schema = self._table_schema()
        if schema is not None:
            parts = [conform(p, schema) for p in parts]
        try:
            return pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def _spill(self, table: pa.Table) -> None:
        """Rows that could not be committed now: to the spill folder, or kept in memory if even that fails."""
        try:
            self.folder.put(table)
            self.metrics.spilled.inc(table.num_rows)
        except OSError as exc:
            log.error(
                "cannot spill %d prediction-log rows to %s (%s); keeping them in memory",
                table.num_rows,
                self.spill_dir,
                exc,
            )
            self._pending.append(table)
        self.metrics.spill_pending.set(self.folder.count())

    def _stage(self, table: pa.Table) -> None:
        """Not the committer: leave the rows in the spill folder for the committer's next commit."""
        try:
            self.folder.put(table)
            self.metrics.staged.inc(table.num_rows)
        except OSError as exc:  # the folder is unusable: write these rows directly (not the folder's)
            log.warning("cannot stage prediction-log rows in %s (%s); committing them directly", self.spill_dir, exc)
            try:
                self._write(table)
            except Exception as write_exc:
                self.metrics.flush_failures.inc()
                log.error("writing %d rows to %s failed; keeping them in memory: %s", table.num_rows, TABLE, write_exc)
                self._pending.append(table)
            else:
                self._flushed(table.num_rows)

    def _commit(self, own: pa.Table | None) -> None:
        """The committer's flush: rows kept in memory, then spill files oldest first, then ``own``, as one
        commit. Rows that can never fit the table (a column of another type) are set aside in
        ``rejected/`` first. If the commit fails, one commit each, oldest first, to the first failure;
        what is left stays in the folder for the next flush."""
        claimed: list[Path] = []
        tables: list[pa.Table] = []
        for p in self.folder.waiting():
            c = self.folder.claim(p)
            if c is None:
                continue
            try:
                t = self.folder.read(c)
            except (OSError, pa.ArrowInvalid) as exc:
                self._set_aside(p.name, f"unreadable: {exc}", c)
                continue
            if (why := self._misfit(t)) is not None:
                self._set_aside(p.name, why, c)
                continue
            claimed.append(c)
            tables.append(t)
        parts = [*self._pending, *tables, *([own] if own is not None else [])]
        if parts and not self._commit_together(parts, claimed):
            self._commit_one_by_one(claimed, tables, own)
        self.metrics.spill_pending.set(self.folder.count())

    def _commit_together(self, parts: list[pa.Table], claimed: list[Path]) -> bool:
        combined = self._combine(parts)
        if combined is None:
            return False
        try:
            self._write(combined)
        except Exception as exc:
            log.warning("committing %d prediction-log parts failed (%s); trying one at a time", len(parts), exc)
            return False
        self._pending.clear()
        for c in claimed:
            c.unlink()
        self._flushed(combined.num_rows)
        return True

    def _misfit(self, table: pa.Table) -> str | None:
        schema = self._table_schema()
        return None if schema is None else misfit(conform(table, schema), schema)

    def _set_aside(self, what: str, why: str, source: Path | pa.Table) -> None:
        self.metrics.flush_failures.inc()
        try:
            where = self.folder.reject(source) if isinstance(source, Path) else self.folder.put(source, rejected=True)
        except OSError as exc:
            log.error(
                "prediction-log rows (%s) can never be committed (%s) and cannot be set aside: %s", what, why, exc
            )
            return
        log.error("prediction-log rows (%s) can never be committed to %s (%s); moved to %s", what, TABLE, why, where)

    def _commit_one_by_one(self, claimed: list[Path], tables: list[pa.Table], own: pa.Table | None) -> None:
        failed = False
        for t in list(self._pending):
            try:
                self._write(t)
            except Exception:
                failed = True
                break
            self._pending.remove(t)
            self._flushed(t.num_rows)
        for c, t in zip(claimed, tables, strict=True):
            if failed:
                self.folder.release(c)
                continue
            try:
                self._write(t)
            except Exception as exc:
                log.warning("committing spill file %s failed (%s); will retry", self.folder.original(c).name, exc)
                self.folder.release(c)
                failed = True
                continue
            c.unlink()
            self._flushed(t.num_rows)
        if own is None:
            return
        if not failed:
            try:
                self._write(own)
            except Exception as exc:
                log.error("writing %d rows to %s failed; spilled to %s: %s", own.num_rows, TABLE, self.spill_dir, exc)
            else:
                self._flushed(own.num_rows)
                return
        self.metrics.flush_failures.inc()
        self._spill(own)

    def _flushed(self, rows: int) -> None:
        self.rows_flushed += rows
        self.metrics.flushed.inc(rows)
        self.metrics.flushes.inc()
        self._commits += 1
        if self.cfg.compact_every and self._commits >= self.cfg.compact_every:
            self._compact()

    def _compact(self) -> None:
        """Each append costs more with every live file: merge the small files now and then (flush thread)."""
        self._commits = 0
        if self._writes_elsewhere:
            return
        try:
            removed, added = self.store.compact(TABLE, target_size=COMPACT_FILE_BYTES, threads=1)
            self._appender.reset()
        except Exception as exc:  # e.g. a `loopline retention` run rewrote the same files first: retried next time
            log.info("compacting %s skipped: %s", TABLE, exc)
            return
        self.metrics.compactions.inc()
        log.info("compacted %s: %d small files into %d", TABLE, removed, added)

    # ------------------------------------------------------------------ background flush
    def _own_table(self, entries: list[Entry]) -> pa.Table | None:
        """This worker's buffered rows as a table; requests whose rows can never fit the table (e.g. a new
        model version sends text where the log has numbers) are set aside, the rest go on."""
        if not entries:
            return None
        own = build_table(entries, self.task, self.redactor, yield_gil)
        if self._misfit(own) is None:
            return own
        good: list[Entry] = []
        bad: list[Entry] = []
        for e in entries:
            (bad if self._misfit(build_table([e], self.task, self.redactor)) else good).append(e)
        if bad:
            rows = build_table(bad, self.task, self.redactor)
            self._set_aside(f"{rows.num_rows} rows of this worker", self._misfit(rows) or "", rows)
        return build_table(good, self.task, self.redactor) if good else None

    def _flush_sync(self, entries: list[Entry]) -> None:
        own = self._own_table(entries)
        if self.folder.try_lead():
            self._commit(own)
            return
        for t in list(self._pending):  # rows an earlier failure kept in memory: to the folder, if it works now
            try:
                self.folder.put(t)
            except OSError:
                break
            self._pending.remove(t)
        if own is not None:
            self._stage(own)

    def _final_sync(self, entries: list[Entry]) -> None:
        """Shutdown: commit (or stage) what is left; the last worker to close commits everything staged."""
        own = self._own_table(entries)
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
            self._commit(own)
        finally:
            self.folder.resign()

    async def flush(self) -> None:
        async with self._flush_lock:
            entries = self._take()
            self.metrics.buffer_rows.set(self._rows)
            await asyncio.to_thread(self._flush_sync, entries)

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
        await asyncio.to_thread(self._flush_sync, [])  # the first worker to start commits what an earlier run left
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
            await asyncio.to_thread(self._final_sync, entries)
        if self._pending:
            log.critical(
                "%d prediction-log rows could be neither written nor spilled", sum(t.num_rows for t in self._pending)
            )
