"""Custom data-contract checks (``contract.checks``): ``function(df) -> bool Series``, True = row passes."""

from __future__ import annotations

import pandas as pd

from busy_hours_loop.features import BUSY_AT


def busy_matches_riders(df: pd.DataFrame) -> pd.Series:
    """The label is what the rider count says: ``busy`` exactly when ``bikers >= BUSY_AT``."""
    return (df["busy"].astype(bool) == (df["bikers"] >= BUSY_AT)).astype(bool)
