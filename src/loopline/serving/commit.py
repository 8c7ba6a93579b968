"""Committing prediction-log rows to ``inference_log``: the committer's side of the log.

One process at a time commits (``spill.SpillFolder``'s lock): by default a dedicated committer process
beside the server's workers (``serving.committer``), else one of the workers. Per commit it takes the
rows kept in memory after an earlier failure, then every file staged in the spill folder (oldest
first), then its own rows if it is a worker, and appends them as one Delta commit. Rows that can never
fit the table (a column of a type that does not cast) are set aside in ``rejected/``; if the commit
fails, it retries one part at a time, oldest first, up to the first failure, and what is left stays in
the folder for the next commit. Every ``compact_every`` commits it merges the table's small files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.serving.logrows import conform, misfit
from loopline.serving.spill import SpillFolder

if TYPE_CHECKING:
    from loopline.config import LogConfig
    from loopline.serving.metrics import LogMetrics
    from loopline.tables import DeltaStore

log = logging.getLogger("loopline.serving.log")
TABLE = "inference_log"
# compaction merges files up to this size and then leaves them alone: each compaction rewrites at most
# this much (one core, off the event loop), however large the log grows
COMPACT_FILE_BYTES = 32 * 1024 * 1024
SCHEMA_SECONDS = 30.0
SPILL_FILES = "spill_files"  # commit metadata: the spill files a commit holds
HISTORY_CHECKED = 50  # commits searched for files a dead committer committed but did not delete


class LogCommitter:
    def __init__(
        self,
        store: DeltaStore,
        cfg: LogConfig,
        folder: SpillFolder,
        metrics: LogMetrics,
        *,
        writer: Callable[[pa.Table], Any] | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.folder = folder
        self.metrics = metrics
        self._appender = store.appender(TABLE, writer="loopline.serving", pid=os.getpid())
        self._append = writer or self._appender
        self._writes_elsewhere = writer is not None  # a custom writer (tests): the store is not the target
        self._schema: pa.Schema | None = None
        self._schema_at = 0.0
        self.pending: list[pa.Table] = []  # tables that could be neither written nor spilled
        self.rows_flushed = 0
        self._commits = 0  # commits since the last compaction

    def table_schema(self, *, fresh: bool = False) -> pa.Schema | None:
        """The table's schema, re-read every ``SCHEMA_SECONDS``: a worker that only stages never writes,
        so it would not see columns the committer added (and could not check new requests against them)."""
        now = time.monotonic()
        # requests check key values against it too: while there is no table, look again every second only
        if (
            fresh
            or not self._schema_at
            or now - self._schema_at > (SCHEMA_SECONDS if self._schema is not None else 1.0)
        ):
            self._schema_at = now
            try:
                self._schema = self.store.schema(TABLE) if self.store.exists(TABLE) else None
            except Exception:
                self._schema = None
        return self._schema

    def write(self, table: pa.Table, files: list[Path] | None = None) -> None:
        """One commit; columns the table already has are cast to its types (a new model version may
        send an int where the log has a float). ``files``: the claimed spill files it commits, named in
        the commit's metadata (``SPILL_FILES``) so that a committer killed before deleting them does not
        have them committed twice (:meth:`_already_committed`)."""
        schema = self.table_schema()
        if schema is not None:
            table = conform(table, schema)
        try:
            if files and not self._writes_elsewhere:
                self._appender(table, **{SPILL_FILES: [self.folder.original(c).name for c in files]})
            else:
                self._append(table)
        except Exception:
            self._schema, self._schema_at = None, 0.0  # re-read next time
            raise
        if self._schema is None:
            self._schema_at = 0.0  # the table exists now: read its schema at the next look

    def _combine(self, parts: list[pa.Table]) -> pa.Table | None:
        """Several tables as one (columns unified by name; missing ones null); None if they do not fit."""
        if len(parts) == 1:
            return parts[0]
        schema = self.table_schema()
        if schema is not None:
            parts = [conform(p, schema) for p in parts]
        try:
            return pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def spill(self, table: pa.Table) -> None:
        """Rows that could not be committed now: to the spill folder, or kept in memory if even that fails."""
        try:
            self.folder.put(table)
            self.metrics.spilled.inc(table.num_rows)
        except OSError as exc:
            log.error(
                "cannot spill %d prediction-log rows to %s (%s); keeping them in memory",
                table.num_rows,
                self.folder.path,
                exc,
            )
            self.pending.append(table)
        if self.folder.leading:  # the committer's gauge (a worker that only stages would leave it stale)
            self.metrics.spill_pending.set(self.folder.count())

    def commit(self, own: pa.Table | None) -> None:
        """The committer's flush: rows kept in memory, then spill files oldest first, then ``own``, as one
        commit. Rows that can never fit the table (a column of another type) are set aside in
        ``rejected/`` first. If the commit fails, one commit each, oldest first, to the first failure;
        what is left stays in the folder for the next flush."""
        claimed: list[Path] = []
        tables: list[pa.Table] = []
        done = self._already_committed()
        for p in self.folder.waiting():
            c = self.folder.claim(p)
            if c is None:
                continue
            if p.name in done:  # committed by a committer killed before it deleted the file
                log.info("spill file %s was committed before its committer died; deleting it", p.name)
                c.unlink()
                continue
            try:
                t = self.folder.read(c)
            except (OSError, pa.ArrowInvalid) as exc:
                self.set_aside(p.name, f"unreadable: {exc}", c)
                continue
            if (why := self.misfit_of(t)) is not None:
                self.set_aside(p.name, why, c)
                continue
            claimed.append(c)
            tables.append(t)
        parts = [*self.pending, *tables, *([own] if own is not None else [])]
        if parts and not self._commit_together(parts, claimed):
            self._commit_one_by_one(claimed, tables, own)
        self.metrics.spill_pending.set(self.folder.count())

    def _commit_together(self, parts: list[pa.Table], claimed: list[Path]) -> bool:
        combined = self._combine(parts)
        if combined is None:
            return False
        try:
            self.write(combined, claimed)
        except Exception as exc:
            log.warning("committing %d prediction-log parts failed (%s); trying one at a time", len(parts), exc)
            return False
        self.pending.clear()
        for c in claimed:
            c.unlink()
        self.flushed(combined.num_rows)
        return True

    def _already_committed(self) -> set[str]:
        """Which of the files put back from a dead committer's claims a commit already holds (exactly once:
        such a file is deleted, not committed again). Reads the table's last commits only when there are any."""
        import json

        names = self.folder.reclaimed
        if not names or self._writes_elsewhere:
            return set()
        self.folder.reclaimed = set()
        try:
            history = self.store.history(TABLE, limit=HISTORY_CHECKED) if self.store.exists(TABLE) else []
        except Exception as exc:  # unreadable now: commit them (at least once) rather than lose them
            log.warning("cannot read %s's history to skip committed spill files: %s", TABLE, exc)
            return set()
        done: set[str] = set()
        for h in history:
            raw = h.get(SPILL_FILES)
            try:
                listed = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                continue
            if isinstance(listed, list):
                done.update(str(x) for x in listed)
        return names & done

    def misfit_of(self, table: pa.Table) -> str | None:
        schema = self.table_schema()
        return None if schema is None else misfit(conform(table, schema), schema)

    def set_aside(self, what: str, why: str, source: Path | pa.Table) -> None:
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
        for t in list(self.pending):
            try:
                self.write(t)
            except Exception:
                failed = True
                break
            self.pending.remove(t)
            self.flushed(t.num_rows)
        for c, t in zip(claimed, tables, strict=True):
            if failed:
                self.folder.release(c)
                continue
            try:
                self.write(t, [c])
            except Exception as exc:
                log.warning("committing spill file %s failed (%s); will retry", self.folder.original(c).name, exc)
                self.folder.release(c)
                failed = True
                continue
            c.unlink()
            self.flushed(t.num_rows)
        if own is None:
            return
        if not failed:
            try:
                self.write(own)
            except Exception as exc:
                log.error("writing %d rows to %s failed; spilled to %s: %s", own.num_rows, TABLE, self.folder.path, exc)
            else:
                self.flushed(own.num_rows)
                return
        self.metrics.flush_failures.inc()
        self.spill(own)

    def flushed(self, rows: int) -> None:
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
