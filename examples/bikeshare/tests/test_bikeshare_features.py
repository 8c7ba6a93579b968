"""Tests of the example's hooks on real rows of the Bikeshare data."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from bikeshare_loop.checks import riders_add_up
from bikeshare_loop.features import WEATHER, build_features


@pytest.fixture(scope="module")
def hours() -> pd.DataFrame:
    """The first two weeks of January 2011 with the timestamp the source query builds."""
    df = pd.read_csv(str(files("ISLP").joinpath("data/Bikeshare.csv")), nrows=330)
    start = pd.Timestamp("2011-01-01", tz="UTC")
    df.insert(0, "ts", start + pd.to_timedelta(df["day"] - 1, unit="D") + pd.to_timedelta(df["hr"], unit="h"))
    return df


def test_one_row_per_hour_without_leaking_the_target(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert len(out) == len(hours)
    assert {"casual", "registered", "mnth", "weathersit"}.isdisjoint(out.columns)
    assert out["bikers"].tolist() == hours["bikers"].tolist()
    assert out["ts"].is_unique and str(out["ts"].dt.tz) == "UTC"


def test_calendar_features_match_the_source_columns(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert out["hour"].tolist() == hours["hr"].tolist()
    assert out["weekday"].tolist() == hours["weekday"].tolist()  # 2011-01-01 was a Saturday (6)
    assert set(out["month"]) == {1}
    assert out.loc[out["weekday"].isin([0, 6]), "is_weekend"].eq(1).all()


def test_cyclic_hour_encoding_is_on_the_unit_circle(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert np.allclose(out["hour_sin"] ** 2 + out["hour_cos"] ** 2, 1.0)
    midnight = out[out["hour"] == 0].iloc[0]
    assert midnight["hour_sin"] == pytest.approx(0.0) and midnight["hour_cos"] == pytest.approx(1.0)


def test_weather_is_ordinal_and_one_hot(hours: pd.DataFrame) -> None:
    out = build_features(hours)
    assert out["weather"].tolist() == [WEATHER.index(w) for w in hours["weathersit"]]
    onehot = out[["weather_clear", "weather_cloudy", "weather_light", "weather_heavy"]]
    assert onehot.sum(axis=1).eq(1).all()
    assert all(str(t) in ("int64", "float64") for c, t in out.dtypes.items() if c != "ts")


def test_riders_add_up(hours: pd.DataFrame) -> None:
    assert riders_add_up(hours).all()
    broken = hours.head(3).assign(casual=[1, 2, 3], registered=[0, 0, 0], bikers=[1, 5, 3])
    assert riders_add_up(broken).tolist() == [True, False, True]
