"""Features for the hourly rentals model: calendar, cyclic hour/weekday encodings, weather."""

from __future__ import annotations

import numpy as np
import pandas as pd

WEATHER = ["clear", "cloudy/misty", "light rain/snow", "heavy rain/snow"]
"""Weather situations from best to worst; the ordinal is the position here."""

KEEP = ["ts", "bikers", "season", "holiday", "workingday", "temp", "atemp", "hum", "windspeed"]


def build_features(df: pd.DataFrame) -> pd.DataFrame:
    """One row per hour: the target `bikers`, the timestamp `ts` and numeric model inputs.

    `casual` and `registered` add up to the target, so they are left out (they would leak it).
    """
    ts = pd.to_datetime(df["ts"], utc=True)
    out = df[KEEP].copy()
    out["ts"] = ts
    out["hour"] = ts.dt.hour.astype("int64")
    out["weekday"] = ((ts.dt.dayofweek + 1) % 7).astype("int64")  # 0 = Sunday, as in the source
    out["month"] = ts.dt.month.astype("int64")
    out["is_weekend"] = (out["weekday"].isin([0, 6])).astype("int64")
    out["hour_sin"] = np.sin(2 * np.pi * out["hour"] / 24)
    out["hour_cos"] = np.cos(2 * np.pi * out["hour"] / 24)
    out["weekday_sin"] = np.sin(2 * np.pi * out["weekday"] / 7)
    out["weekday_cos"] = np.cos(2 * np.pi * out["weekday"] / 7)
    weather = pd.Categorical(df["weathersit"], categories=WEATHER)
    out["weather"] = pd.Series(weather.codes, index=df.index).astype("int64")
    for i, name in enumerate(WEATHER):
        out[f"weather_{name.split('/')[0].split()[0]}"] = (out["weather"] == i).astype("int64")
    for col in ("season", "holiday", "workingday", "bikers"):
        out[col] = out[col].astype("int64")
    for col in ("temp", "atemp", "hum", "windspeed"):
        out[col] = out[col].astype("float64")
    return out.reset_index(drop=True)
