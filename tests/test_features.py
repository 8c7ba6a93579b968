"""Features: the hook on validated rows, versions written, replace vs append, hook errors."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from loopline.config import FeaturesConfig
from loopline.errors import HookError
from loopline.features import build_features
from loopline.tables import DeltaStore


def hook_module(root: Path, body: str) -> str:
    name = f"feats_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def frame() -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=6, freq="h", tz="UTC")
    return pd.DataFrame({"ts": ts, "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": [0, 1, 0, 1, 0, 1]})


def test_hook_output_lands_in_features_and_the_version_is_reported(tmp_path: Path, frame: pd.DataFrame) -> None:
    module = hook_module(
        tmp_path,
        """\
        def build(df):
            out = df[["x", "y"]].copy()
            out["x2"] = df["x"] ** 2
            out["hour"] = df["ts"].dt.hour
            return out
        """,
    )
    store = DeltaStore(str(tmp_path / "tables"))
    config = FeaturesConfig(hook=f"{module}:build")
    first = build_features(config, store, frame, "b1", root=tmp_path, time_column="ts")
    assert (first.version, first.rows, first.mode) == (0, 6, "replace_batch")
    assert first.columns == ["ts", "x", "y", "x2", "hour", "_batch_id"]  # time column kept by loopline
    table = store.read("features")
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.column("x2").to_pylist() == [1.0, 4.0, 9.0, 16.0, 25.0, 36.0]
    second = build_features(config, store, frame.iloc[:3], "b2", root=tmp_path, time_column="ts")
    again = build_features(config, store, frame.iloc[:4], "b1", root=tmp_path, time_column="ts")
    assert (second.version, again.version) == (1, 2)
    assert store.version("features") == 2
    counts = store.read("features").group_by("_batch_id").aggregate([("x", "count")]).to_pylist()
    assert {r["_batch_id"]: r["x_count"] for r in counts} == {"b1": 4, "b2": 3}
    pinned = store.read("features", version=first.version)
    assert pinned.num_rows == 6


def test_no_hook_is_identity_and_append_mode_appends(tmp_path: Path, frame: pd.DataFrame) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    config = FeaturesConfig(mode="append")
    a = build_features(config, store, frame, "b1")
    b = build_features(config, store, frame, "b1")
    assert (a.version, b.version) == (0, 1)
    assert store.read("features").num_rows == 12
    assert a.columns == ["ts", "x", "y", "_batch_id"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "def build(df):\n    raise ValueError('bad hour')\n",
            r"features.hook feats_\w+:build raised ValueError: bad hour",
        ),
        (
            "def build(df):\n    return df.values\n",
            r"features.hook feats_\w+:build must return a pandas DataFrame, got ndarray",
        ),
        ("build = 3\n", r"features.hook: 'feats_\w+:build' is not callable"),
        ("", r"features.hook: module 'feats_\w+' has no attribute 'build'"),
    ],
)
def test_hook_errors_name_the_hook(tmp_path: Path, frame: pd.DataFrame, body: str, match: str) -> None:
    module = hook_module(tmp_path, body)
    store = DeltaStore(str(tmp_path / "tables"))
    with pytest.raises(HookError, match=match):
        build_features(FeaturesConfig(hook=f"{module}:build"), store, frame, "b1", root=tmp_path)
    assert not store.exists("features")


def test_a_missing_hook_module(tmp_path: Path, frame: pd.DataFrame) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    with pytest.raises(HookError, match=r"features.hook: cannot import module 'no_such_pkg.feats'"):
        build_features(FeaturesConfig(hook="no_such_pkg.feats:build"), store, frame, "b1", root=tmp_path)
