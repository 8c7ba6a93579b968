"""Tests of the example's hooks on real rows of the Bikeshare data."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from busy_hours_loop.checks import busy_matches_riders
from busy_hours_loop.features import BUSY_AT, LEAKS, build_features


@pytest.fixture(scope="module")
def hours() -> pd.DataFrame:
    """The first two weeks of January 2011 as the source query gives them (timestamp and label)."""
    df = pd.read_csv(str(files("ISLP").joinpath("data/Bikeshare.csv")), nrows=330)
    start = pd.Timestamp("2011-01-01", tz="UTC")
    df.insert(0, "ts", start + pd.to_timedelta(df["day"] - 1, unit="D") + pd.to_timedelta(df["hr"], unit="h"))
    df["busy"] = df["bikers"] >= BUSY_AT
    return df


def test_one_row_per_hour_with_a_boolean_label_and_no_leak(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert len(out) == len(hours)
    assert set(LEAKS).isdisjoint(out.columns)
    assert out["busy"].dtype == bool
    assert out["busy"].tolist() == (hours["bikers"] >= 100).tolist()
    assert 0 < out["busy"].sum() < len(out)  # both classes occur in January
    assert out["ts"].is_unique and str(out["ts"].dt.tz) == "UTC"


def test_calendar_features_match_the_source_columns(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert out["hour"].tolist() == hours["hr"].tolist()
    assert out["weekday"].tolist() == hours["weekday"].tolist()  # 2011-01-01 was a Saturday (6)
    assert np.allclose(out["hour_sin"] ** 2 + out["hour_cos"] ** 2, 1.0)


def test_weather_stays_text_for_the_model_to_encode(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert out["weathersit"].tolist() == hours["weathersit"].tolist()
    assert out["weathersit"].map(type).eq(str).all()
    numeric = out.drop(columns=["ts", "busy", "weathersit"])
    assert all(str(t) in ("int64", "float64") for t in numeric.dtypes)


def test_busy_matches_riders(hours: pd.DataFrame) -> None:
    assert busy_matches_riders(hours).all()
    broken = pd.DataFrame({"bikers": [99, 100, 250], "busy": [True, True, False]})
    assert busy_matches_riders(broken).tolist() == [False, True, False]
