"""Tests of the example's features hook on real rows of the Bikeshare data."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from weather_loop.features import CLASSES, build_features, weather


@pytest.fixture(scope="module")
def hours() -> pd.DataFrame:
    """The first two weeks of January 2011 as the source query gives them (timestamp, label, humidity before)."""
    df = pd.read_csv(str(files("ISLP").joinpath("data/Bikeshare.csv")), nrows=330)
    start = pd.Timestamp("2011-01-01", tz="UTC")
    df.insert(0, "ts", start + pd.to_timedelta(df["day"] - 1, unit="D") + pd.to_timedelta(df["hr"], unit="h"))
    hour = pd.Timedelta(hours=1)
    follows = df["ts"].shift(-1) == df["ts"] + hour
    df["next_weather"] = df["weathersit"].shift(-1).where(follows, None)
    df["hum_prev"] = df["hum"].shift(1).where(df["ts"].shift(1) == df["ts"] - hour, df["hum"])
    return df


def test_one_row_per_hour_with_a_text_label(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert len(out) == len(hours) and out["ts"].is_unique
    labelled = out["next_weather"].dropna()
    assert set(labelled) <= set(CLASSES) and labelled.map(type).eq(str).all()
    assert out["next_weather"].isna().sum() == hours["next_weather"].isna().sum() > 0  # hours missing in the data
    assert out["next_weather"].iloc[0] == hours["weathersit"].iloc[1]


def test_text_inputs_stay_text_and_numbers_are_numbers(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert out["weather_now"].tolist() == weather(hours["weathersit"]).tolist()
    assert set(out["month"]) == {"Jan"}
    numeric = out.drop(columns=["ts", "next_weather", "weather_now", "month"])
    assert all(str(t) in ("int64", "float64") for t in numeric.dtypes)
    assert np.allclose(out["hour_sin"] ** 2 + out["hour_cos"] ** 2, 1.0)
    assert out["hum_change"].iloc[0] == 0.0  # the first hour has no hour before it


def test_heavy_rain_is_merged_into_light_rain() -> None:
    merged = weather(pd.Series(["clear", "heavy rain/snow", "light rain/snow", "cloudy/misty"]))
    assert merged.tolist() == ["clear", "light rain/snow", "light rain/snow", "cloudy/misty"]
