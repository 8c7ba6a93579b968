"""Features for the busy-hour classifier: calendar, cyclic hour/weekday, weather (the weather situation as text).

The source query derives the label (``busy = bikers >= 100``); the rider counts themselves are the label's
ingredients and never reach the features table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BUSY_AT = 100
"""Riders in the hour from which it counts as busy (about the median hour of 2011; see README)."""

LEAKS = ("bikers", "casual", "registered")
"""Source columns the label is computed from: left out of the features."""

NUMERIC = ["temp", "atemp", "hum", "windspeed"]
FLAGS = ["holiday", "workingday"]


def build_features(df: pd.DataFrame) -> pd.DataFrame:
    """One row per hour: ``ts``, the label ``busy`` (bool) and the model inputs.

    ``weathersit`` stays text (clear, cloudy/misty, ...): loopline encodes it inside the model.
    """
    ts = pd.to_datetime(df["ts"], utc=True)
    out = pd.DataFrame({"ts": ts, "busy": df["busy"].astype(bool)}, index=df.index)
    out["hour"] = ts.dt.hour.astype("int64")
    out["weekday"] = ((ts.dt.dayofweek + 1) % 7).astype("int64")  # 0 = Sunday, as in the source
    out["hour_sin"] = np.sin(2 * np.pi * out["hour"] / 24)
    out["hour_cos"] = np.cos(2 * np.pi * out["hour"] / 24)
    for col in FLAGS:
        out[col] = df[col].astype("int64")
    out["weathersit"] = df["weathersit"].astype(str).astype(object)
    for col in NUMERIC:
        out[col] = df[col].astype("float64")
    return out.reset_index(drop=True)
