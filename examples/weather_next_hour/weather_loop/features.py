"""Features for the next hour's weather: the current hour's weather (as text), month (as text), hour, readings.

The label ``next_weather`` is the weather situation of the following hour, built by the source query;
it is null when the next hour is missing from the data (61 hours of 2011): a label that never arrived,
which training leaves out and batch scoring does not mind. The source's single heavy rain/snow
hour is merged into light rain/snow, in the label and in the input alike: one example cannot be learned
as a class of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES = ["clear", "cloudy/misty", "light rain/snow"]
"""The labels, from best to worst weather."""

MERGE = {"heavy rain/snow": "light rain/snow"}
NUMERIC = ["temp", "atemp", "hum", "windspeed"]


def weather(values: pd.Series) -> pd.Series:
    """Weather situations as one of :data:`CLASSES` (text; heavy rain/snow merged)."""
    return values.astype(str).replace(MERGE).astype(object)


def build_features(df: pd.DataFrame) -> pd.DataFrame:
    """One row per hour: ``ts``, the label ``next_weather`` (text) and the model inputs.

    ``weather_now`` and ``month`` stay text: loopline encodes them inside the model (no hand encoding).
    """
    ts = pd.to_datetime(df["ts"], utc=True)
    label = df["next_weather"]
    out = pd.DataFrame({"ts": ts, "next_weather": weather(label).where(label.notna(), None)}, index=df.index)
    out["weather_now"] = weather(df["weathersit"])
    out["month"] = df["mnth"].astype(str).astype(object)
    out["hour"] = ts.dt.hour.astype("int64")
    out["hour_sin"] = np.sin(2 * np.pi * out["hour"] / 24)
    out["hour_cos"] = np.cos(2 * np.pi * out["hour"] / 24)
    for col in NUMERIC:
        out[col] = df[col].astype("float64")
    out["hum_change"] = df["hum"].astype("float64") - df["hum_prev"].astype("float64")
    return out.reset_index(drop=True)
