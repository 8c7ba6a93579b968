"""Retention: delete rows older than the configured age from each table, then vacuum their files."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from loopline.errors import ConfigError
from loopline.tables import DeltaStore, RetentionResult

if TYPE_CHECKING:
    from loopline.config import Project

# The time column each table ages by (the features table ages by the model's time column).
TIME_COLUMNS = {
    "raw": "_ingested_at",
    "quarantine": "_quarantined_at",
    "predictions": "scored_at",
    "inference_log": "timestamp",
    "feedback": "received_at",
    "monitoring": "checked_at",
    "registry_events": "timestamp",
    "decisions": "timestamp",
    "runs": "started_at",
}


def time_column(project: Project, table: str) -> str:
    if table == "features" and project.config.model.time_column:
        return project.config.model.time_column
    try:
        return TIME_COLUMNS[table]
    except KeyError:
        raise ConfigError(
            f"{project.config_path.name}: retention.{table}: loopline does not know table {table!r}",
            hint=f"tables with a time column: {', '.join(sorted(TIME_COLUMNS))}",
        ) from None


def apply_retention(project: Project, now: datetime | None = None) -> list[RetentionResult]:
    """Apply ``retention:`` to every listed table that exists; tables not yet written are skipped."""
    store = DeltaStore(project.storage_root, project.storage_options)
    results = []
    for table, keep in project.config.retention.items():
        column = time_column(project, table)
        if not store.exists(table):
            continue
        results.append(store.retain(table, column, keep, now=now))
    return results


def retention_job(project: Project) -> list[RetentionResult]:
    return apply_retention(project)
