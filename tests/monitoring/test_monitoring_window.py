"""Monitoring windows on event time (model.time_column) or wall-clock time (when rows were scored)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from _lifecycle import features_table, make_project, one_thread  # noqa: F401  (fixture)
from loopline.errors import ConfigError, MonitoringError
from loopline.tables import DeltaStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _scored_history(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    """A champion trained on January 2024 (hourly rows) and a later batch of February rows scored today."""
    from loopline import registry
    from loopline.batch import score
    from loopline.training import train

    p = make_project(tmp_path, {"gate": {"thresholds": None, "min_improvement": None}, **extra})
    registry.promote(p, train(p).version)
    store = DeltaStore(p.storage_root)
    later = features_table(n=240, seed=3)
    shifted = pa.compute.add(later.column("ts"), pa.scalar(timedelta(days=31)))
    later = later.set_column(later.schema.get_field_index("ts"), "ts", shifted)
    later = later.set_column(later.schema.get_field_index("_batch_id"), "_batch_id", pa.array(["feb"] * 240))
    later = later.set_column(0, "id", pa.array(range(1000, 1240), pa.int64()))
    store.append("features", later)
    score(p, batch_id="feb", input_batch="feb")
    return p


def test_event_time_windows_count_rows_by_their_own_time(tmp_path: Path) -> None:
    from loopline.monitoring.monitor import monitor

    p = _scored_history(tmp_path)
    preds = DeltaStore(p.storage_root).read("predictions")
    assert "ts" in preds.schema.names  # batch keeps the event time beside the keys
    # default: the last 7 days of data (the batch's newest event time), not of wall-clock time
    last = monitor(p)
    assert last.window_end == datetime(2024, 2, 10, 23, 0, 0, 1, tzinfo=UTC)  # newest row + 1 us
    assert last.window_start == last.window_end - timedelta(days=7)
    assert last.drift.n_current == 168 and last.verdict != "no_data"
    # explicit bounds are event time too: the first day of February holds 24 rows
    day = monitor(p, since=datetime(2024, 2, 1, tzinfo=UTC), until=datetime(2024, 2, 2, tzinfo=UTC))
    assert day.drift.n_current == 24
    # no rows of March: no data, never "ok"
    empty = monitor(p, since=datetime(2024, 3, 1, tzinfo=UTC), until=datetime(2024, 3, 2, tzinfo=UTC))
    assert empty.verdict == "no_data" and "event time ts" in empty.message
    # wall clock: everything scored in the last 7 days, whatever its event time
    wall = monitor(p, time="wall")
    assert wall.drift.n_current == 240


def test_event_time_needs_a_time_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"monitoring.time is event, but model.time_column is not set"):
        make_project(tmp_path, {"model": {"time_column": None}, "monitoring": {"time": "event"}})
    from loopline.monitoring.window import event_column

    p = make_project(tmp_path / "b", {"model": {"time_column": None}})
    assert event_column(p) is None  # auto: wall clock without a time column
    with pytest.raises(MonitoringError, match=r"monitoring by event time needs model.time_column"):
        event_column(p, "event")


def test_a_time_key_logged_as_text_counts_by_wall_clock(tmp_path: Path) -> None:
    """Prediction logs written before the time key was typed hold it as text: no crash, wall clock."""
    from loopline.monitoring.monitor import monitor

    p = _scored_history(tmp_path, monitoring={"source": "both"})
    store = DeltaStore(p.storage_root)
    preds = store.read("predictions")
    feats = store.read("features").slice(0, 5)
    now = datetime.now(UTC)
    log = {
        "request_id": pa.array([f"r{i}" for i in range(5)]),
        "timestamp": pa.array([now] * 5, pa.timestamp("us", tz="UTC")),
        "status": pa.array([200] * 5, pa.int64()),
        "prediction": preds.column("prediction").slice(0, 5),
    }
    log.update({c: feats.column(c) for c in feats.column_names if c not in ("ts", "_batch_id", "target", "id")})
    log["ts"] = pa.array(["2024-02-09T10:00:00+00:00"] * 5)  # text, as JSON sent it
    store.append("inference_log", pa.table(log))
    res = monitor(p, time="event")
    assert res.verdict != "no_data" and res.drift.n_current == 168  # the batch's week; logged rows are today's
    assert monitor(p, time="wall").drift.n_current == 245
