"""The prediction log: every prediction the server returns lands in the ``inference_log`` table.

Off the request path: a request appends one entry to an in-memory buffer (a list append under a
lock). A background task flushes the buffer as one Delta commit when it holds ``flush_rows`` rows
or every ``flush_interval``. If the commit fails, the rows (already redacted) go to an Arrow file in
the spill folder and are replayed, oldest first, before the next flush and at the next start. If the
buffer passes ``max_buffer_rows`` (the table is slow, not failing), it is spilled to disk at once,
counted in ``loopline_log_buffer_overflows`` and logged. ``close()`` (lifespan shutdown, after
uvicorn drained in-flight requests) flushes what is left, so a clean SIGTERM loses nothing.

Replay is at-least-once: a crash between a successful replay commit and deleting its spill file
would commit those rows twice (``request_id`` identifies them).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loopline.errors import ServingError

if TYPE_CHECKING:
    from loopline.config import LogConfig
    from loopline.serving.metrics import Metrics
    from loopline.tables import DeltaStore

log = logging.getLogger("loopline.serving.log")
TABLE = "inference_log"
TS = pa.timestamp("us", tz="UTC")
# compaction merges files up to this size and then leaves them alone: each compaction rewrites at most
# this much (one core, off the event loop), however large the log grows
COMPACT_FILE_BYTES = 32 * 1024 * 1024
BASE_COLUMNS = (
    "request_id",
    "timestamp",
    "model_name",
    "model_version",
    "endpoint",
    "status",
    "latency_ms",
    "prediction",
)


@dataclass
class Entry:
    """One request's predictions (n rows)."""

    request_ids: list[str]
    ts_us: int
    model_name: str
    model_version: str
    endpoint: str
    latency_ms: float
    predictions: np.ndarray
    inputs: dict[str, np.ndarray]
    passthrough: dict[str, list[Any]] = field(default_factory=dict)
    status: int = 200


class Redactor:
    """``serving.log.redact``: hash (sha256 of salt + value, hex) or drop columns before they are written."""

    def __init__(self, rules: Mapping[str, str], salt_env: str) -> None:
        self.rules = dict(rules)
        self.salt = b""
        if any(v == "hash" for v in self.rules.values()):
            salt = os.environ.get(salt_env)
            if not salt:
                raise ServingError(
                    f"serving.log.redact hashes {[k for k, v in self.rules.items() if v == 'hash']}, "
                    f"but the salt variable {salt_env} is not set",
                    hint=f"export {salt_env}=<a long random secret> (keep it stable: it makes hashes joinable)",
                )
            self.salt = salt.encode()

    def hash(self, value: Any) -> str:
        return hashlib.sha256(self.salt + str(value).encode()).hexdigest()

    def apply(self, table: pa.Table) -> pa.Table:
        for col, how in self.rules.items():
            if col not in table.column_names:
                continue
            i = table.column_names.index(col)
            if how == "drop":
                table = table.remove_column(i)
            else:
                values = table.column(i).to_pylist()
                hashed = [None if v is None else self.hash(v) for v in values]
                table = table.set_column(i, col, pa.array(hashed, type=pa.string()))
        return table


def _arrow(values: np.ndarray | list[Any]) -> pa.Array:
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            return _arrow(values.tolist())
        if values.dtype.kind == "M":
            return pa.array(values.astype("datetime64[us]")).cast(TS)
        return pa.array(values)
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_null(arr.type):
        return arr.cast(pa.string())
    return arr


def build_table(entries: list[Entry], task: str, redactor: Redactor) -> pa.Table:
    """Buffered entries -> one Arrow table in the ``inference_log`` layout (docs/contracts.md)."""
    counts = [len(e.request_ids) for e in entries]
    total = sum(counts)
    ids: list[str] = []
    for e in entries:
        ids.extend(e.request_ids)
    cols: dict[str, pa.Array] = {
        "request_id": pa.array(ids, type=pa.string()),
        "timestamp": pa.array(np.repeat(np.array([e.ts_us for e in entries], dtype=np.int64), counts))
        .cast(pa.int64())
        .cast(TS),
        "model_name": pa.array(
            np.repeat(np.array([e.model_name for e in entries], dtype=object), counts).tolist(), type=pa.string()
        ),
        "model_version": pa.array(
            np.repeat(np.array([e.model_version for e in entries], dtype=object), counts).tolist(), type=pa.string()
        ),
        "endpoint": pa.array(
            np.repeat(np.array([e.endpoint for e in entries], dtype=object), counts).tolist(), type=pa.string()
        ),
        "status": pa.array(np.repeat(np.array([e.status for e in entries], dtype=np.int64), counts)),
        "latency_ms": pa.array(np.repeat(np.array([e.latency_ms for e in entries], dtype=np.float64), counts)),
    }
    preds = [np.asarray(e.predictions) for e in entries]
    if task == "regression" and all(p.ndim == 1 and p.dtype.kind in "fiub" for p in preds):
        cols["prediction"] = pa.array(np.concatenate(preds).astype(np.float64))
    else:
        flat: list[Any] = []
        for p in preds:
            flat.extend(str(v) for v in p.tolist())
        cols["prediction"] = pa.array(flat, type=pa.string())
    names: list[str] = []
    for e in entries:
        for k in (*e.inputs, *e.passthrough):
            if k not in names and k not in cols:
                names.append(k)
    for name in names:
        same = [e.inputs.get(name) for e in entries]
        first = same[0]
        if (
            isinstance(first, np.ndarray)
            and first.dtype != object
            and first.dtype.kind != "M"
            and all(isinstance(a, np.ndarray) and a.dtype == first.dtype for a in same)
        ):  # the common case: one typed column across the batch, one conversion
            cols[name] = pa.array(np.concatenate(same))  # type: ignore[arg-type]
            continue
        parts: list[pa.Array] = []
        for e, n in zip(entries, counts, strict=True):
            if name in e.inputs:
                parts.append(_arrow(e.inputs[name]))
            elif name in e.passthrough:  # key columns sent beside the inputs: stored as strings
                parts.append(pa.array([None if v is None else str(v) for v in e.passthrough[name]], pa.string()))
            else:
                parts.append(pa.nulls(n))
        cols[name] = _concat(parts)
    table = pa.table(cols)
    assert table.num_rows == total
    return redactor.apply(table)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    for i, name in enumerate(table.column_names):
        if name in schema.names:
            want = schema.field(name).type
            col = table.column(i)
            if col.type != want:
                try:
                    table = table.set_column(i, name, col.cast(want))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    pass  # leave it; the write reports the conflict
    return table


def _concat(parts: list[pa.Array]) -> pa.Array:
    types = {p.type for p in parts if not pa.types.is_null(p.type)}
    if not types:
        return pa.nulls(sum(len(p) for p in parts), pa.string())
    if len(types) == 1:
        t = types.pop()
        return pa.concat_arrays([p.cast(t) for p in parts])
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        return pa.concat_arrays([p.cast(pa.float64()) for p in parts])
    return pa.concat_arrays([p.cast(pa.string()) for p in parts])


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
        self.metrics = metrics
        self.redactor = Redactor(cfg.redact, cfg.salt_env)
        self._appender = store.appender(TABLE, writer="loopline.serving")
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

    def _write(self, table: pa.Table) -> None:
        """One commit; columns the table already has are cast to its types (a new model version may
        send an int where the log has a float)."""
        if self._schema is None and self.store.exists(TABLE):
            try:
                self._schema = self.store.schema(TABLE)
            except Exception:
                self._schema = None
        if self._schema is not None:
            table = _conform(table, self._schema)
        try:
            self._append(table)
        except Exception:
            self._schema = None  # re-read next time
            raise

    # ------------------------------------------------------------------ spill files
    def _spill(self, table: pa.Table) -> None:
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
            tmp = self.spill_dir / f".{name}.tmp"
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, self.spill_dir / name)
            self.metrics.spilled.inc(table.num_rows)
        except OSError as exc:
            log.error(
                "cannot spill %d prediction-log rows to %s (%s); keeping them in memory",
                table.num_rows,
                self.spill_dir,
                exc,
            )
            self._pending.append(table)
        self._count_spill_files()

    def _count_spill_files(self) -> None:
        try:
            self.metrics.spill_pending.set(len(list(self.spill_dir.glob("*.arrow"))))
        except OSError:
            pass

    def _reclaim_stale(self) -> None:
        """Spill files claimed by a worker that died are put back for replay."""
        if not self.spill_dir.is_dir():
            return
        for p in self.spill_dir.glob("*.arrow.claimed-*"):
            pid = int(p.name.rsplit("-", 1)[1]) if p.name.rsplit("-", 1)[1].isdigit() else -1
            if pid == os.getpid() or not _alive(pid):
                try:
                    os.replace(p, p.with_name(p.name.split(".claimed-")[0]))
                except OSError:
                    pass

    def _replay(self) -> bool:
        """Commit spill files oldest first; stop at the first failure. True when none are left."""
        for t in list(self._pending):
            try:
                self._write(t)
            except Exception:
                return False
            self._pending.remove(t)
            self._flushed(t.num_rows)
        if not self.spill_dir.is_dir():
            return True
        for p in sorted(self.spill_dir.glob("*.arrow")):
            claimed = p.with_name(f"{p.name}.claimed-{os.getpid()}")
            try:
                os.replace(p, claimed)  # atomic claim: another worker may be replaying too
            except OSError:
                continue
            try:
                with pa.memory_map(str(claimed)) as src:
                    table = pa.ipc.open_file(src).read_all()
                self._write(table)
            except Exception as exc:
                if "schema" in str(exc).lower():  # will never fit: set aside so it cannot block the log
                    rejected = self.spill_dir / "rejected"
                    rejected.mkdir(exist_ok=True)
                    os.replace(claimed, rejected / p.name)
                    self.metrics.flush_failures.inc()
                    log.error(
                        "spill file %s does not fit the inference_log schema (%s); moved to %s for a manual fix",
                        p.name,
                        exc,
                        rejected,
                    )
                    continue
                os.replace(claimed, p)
                log.warning("replaying %s failed (%s); will retry", p.name, exc)
                self._count_spill_files()
                return False
            claimed.unlink()
            self._flushed(table.num_rows)
            log.info("replayed %d spilled prediction-log rows from %s", table.num_rows, p.name)
        self._count_spill_files()
        return True

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
        except Exception as exc:  # e.g. another worker compacted the same files first: retried next time
            log.info("compacting %s skipped: %s", TABLE, exc)
            return
        self.metrics.compactions.inc()
        log.info("compacted %s: %d small files into %d", TABLE, removed, added)

    # ------------------------------------------------------------------ background flush
    def _flush_sync(self, entries: list[Entry]) -> None:
        replayed = self._replay()
        if not entries:
            return
        table = build_table(entries, self.task, self.redactor)
        if not replayed:  # keep order: the table is down, do not try it again now
            self.metrics.flush_failures.inc()
            self._spill(table)
            return
        try:
            self._write(table)
        except Exception as exc:
            self.metrics.flush_failures.inc()
            log.error("writing %d rows to %s failed; spilled to %s: %s", table.num_rows, TABLE, self.spill_dir, exc)
            self._spill(table)
            return
        self._flushed(table.num_rows)

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
        self._reclaim_stale()
        await asyncio.to_thread(self._replay)
        self._task = self._loop.create_task(self._run())

    async def close(self) -> None:
        """Stop the flusher and write everything still buffered (called after in-flight requests drained)."""
        self._stopping = True
        if self._task is not None and self._event is not None:
            self._event.set()
            await self._task  # lets a flush in progress finish
            self._task = None
        await self.flush()
        if self._pending:
            log.critical(
                "%d prediction-log rows could be neither written nor spilled", sum(t.num_rows for t in self._pending)
            )


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
