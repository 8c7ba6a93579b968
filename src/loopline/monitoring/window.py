"""The monitoring window: ``[start, end)`` on event time or on wall-clock time.

By event time (``monitoring.time: event``, the default when ``model.time_column`` is set) a row belongs
to the window its own time column says: replaying last March's data today monitors last March. Rows
without an event time (an HTTP request that did not send the time column) fall back to when they were
scored or logged. By wall clock every row counts when it was scored (``predictions.scored_at``) or
logged (``inference_log.timestamp``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as ds

from loopline.errors import MonitoringError

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.tables import DeltaStore

_TS = pa.timestamp("us", tz="UTC")


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resolve_window(
    default: timedelta,
    window: timedelta | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """``[start, end)`` from a window length or explicit bounds (naive datetimes are UTC)."""
    if window is not None and since is not None:
        raise MonitoringError(
            "give a window length or --since/--until, not both",
            hint="loopline monitor --window 7d, or --since 2026-01-01 --until 2026-01-08",
        )
    if window is not None and window <= timedelta(0):
        raise MonitoringError(f"the window must be longer than 0 seconds, got {window}")
    end = utc(until) if until is not None else utc(now or datetime.now(UTC))
    start = utc(since) if since is not None else end - (window or default)
    if start >= end:
        raise MonitoringError(f"the window start {start.isoformat()} is not before its end {end.isoformat()}")
    return start, end


def event_column(project: Project, time: str | None = None) -> str | None:
    """The event-time column the window is taken on, or None for wall-clock time."""
    basis = time or project.config.monitoring.time
    column = project.config.model.time_column
    if basis == "event" and column is None:
        raise MonitoringError(
            "monitoring by event time needs model.time_column", hint="set model.time_column, or use --time wall"
        )
    return column if basis in ("event", "auto") else None


def _literal(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def window_sql(alias: str, columns: list[str], wall: str, start: datetime, end: datetime, event: str | None) -> str:
    """SQL predicate: the row's event time (else its wall-clock column) is in ``[start, end)``."""
    when = f'{alias}."{wall}"'
    if event is not None and event in columns:
        when = f'COALESCE(TRY_CAST({alias}."{event}" AS TIMESTAMPTZ), {when})'
    return f"{when} >= {_literal(start)} AND {when} < {_literal(end)}"


def _bounds(typ: pa.DataType, start: datetime, end: datetime) -> tuple[pa.Scalar, pa.Scalar]:
    if pa.types.is_date(typ):
        return pa.scalar(start.date(), typ), pa.scalar(end.date(), typ)
    if getattr(typ, "tz", None) is None:
        return tuple(pa.scalar(x.replace(tzinfo=None), pa.timestamp("us")) for x in (start, end))  # type: ignore[return-value]
    return pa.scalar(start, _TS), pa.scalar(end, _TS)


def _temporal(typ: pa.DataType) -> bool:
    """Only a timestamp/date column is an event time: a key sent as text over HTTP (older prediction
    logs stored passthrough keys as strings) leaves those rows to their wall-clock time."""
    return bool(pa.types.is_timestamp(typ) or pa.types.is_date(typ))


def window_filter(dataset: ds.Dataset, wall: str, start: datetime, end: datetime, event: str | None) -> ds.Expression:
    """Dataset filter: the row's event time (else its wall-clock column) is in ``[start, end)``."""
    names = dataset.schema.names
    lo, hi = _bounds(dataset.schema.field(wall).type, start, end)
    by_wall = (ds.field(wall) >= lo) & (ds.field(wall) < hi)
    if event is None or event not in names or not _temporal(dataset.schema.field(event).type):
        return by_wall
    elo, ehi = _bounds(dataset.schema.field(event).type, start, end)
    by_event = (ds.field(event) >= elo) & (ds.field(event) < ehi)
    return by_event | (ds.field(event).is_null() & by_wall)


def event_filter(dataset: ds.Dataset, start: datetime, end: datetime, event: str) -> ds.Expression | None:
    """Rows whose event time is in ``[start, end)`` (None when the dataset has no such column)."""
    if event not in dataset.schema.names or not _temporal(dataset.schema.field(event).type):
        return None
    lo, hi = _bounds(dataset.schema.field(event).type, start, end)
    return (ds.field(event) >= lo) & (ds.field(event) < hi)


def newest_event(project: Project, store: DeltaStore, event: str) -> datetime | None:
    """The newest event time among the rows monitoring reads (``predictions`` / ``inference_log``, per
    ``monitoring.source``): an event-time window with no explicit end ends there, so "the last 7 days"
    means the last 7 days of data, also for history scored today."""
    src = project.config.monitoring.source
    parts: list[str] = []
    names: list[str] = []
    for table, wall, used in (
        ("predictions", "scored_at", src in ("batch", "both")),
        ("inference_log", "timestamp", src in ("inference_log", "both")),
    ):
        if not used or not store.exists(table):
            continue
        cols = store.schema(table).names
        when = f'COALESCE(TRY_CAST("{event}" AS TIMESTAMPTZ), "{wall}")' if event in cols else f'"{wall}"'
        names.append(table)
        parts.append(f"SELECT max({when}) AS t FROM {table}")
    if not parts:
        return None
    con = store.sql(names)
    try:
        row = con.execute(f"SELECT max(t) FROM ({' UNION ALL '.join(parts)})").fetchone()
    except Exception as exc:
        raise MonitoringError(f"reading the newest event time failed: {exc}") from exc
    finally:
        con.close()
    value = row[0] if row else None
    return utc(value) if isinstance(value, datetime) else None
