"""Custom data-contract checks (``contract.checks``): ``function(df) -> bool Series``, True = row passes."""

from __future__ import annotations

import pandas as pd


def riders_add_up(df: pd.DataFrame) -> pd.Series:
    """Casual plus registered riders must equal all riders."""
    return (df["casual"] + df["registered"] == df["bikers"]).astype(bool)
