"""Feedback rows take the key types of the tables monitoring joins them with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from loopline.serving.feedback import _conform, build_table, parse_items
from loopline.serving.schema import InputError
from loopline.tables import DeltaStore


def test_keys_follow_predictions_then_feedback(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ts = pa.array([datetime(2011, 1, 1, 5, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    store.append("predictions", pa.table({"ts": ts, "prediction": [1.0]}))
    server = SimpleNamespace(store=store, keys=("ts",), feedback_schema=None)
    items = parse_items(b'[{"keys": {"ts": "2011-01-01T05:00:00"}, "label": 3}]', ("ts",), "regression")
    table = _conform(server, build_table(items, ("ts",), "regression"))  # type: ignore[arg-type]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.column("ts")[0].as_py() == datetime(2011, 1, 1, 5, tzinfo=UTC)
    store.append("feedback", table)
    bad = parse_items(b'{"keys": {"ts": "yesterday"}, "label": 3}', ("ts",), "regression")
    with pytest.raises(InputError, match=r"keys.ts: values must be timestamp\[us, tz=UTC\]"):
        _conform(server, build_table(bad, ("ts",), "regression"))  # type: ignore[arg-type]
