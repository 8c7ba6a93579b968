"""What a training run reads: the features table at a pinned Delta version, its labelled rows, the
training window, the time split, and recency weights.

The split keeps the gate honest under drift: the test rows are the newest labelled rows, and when the
champion's training cutoff is known (its run's ``loopline.trained_until``), only rows after it, so the
champion and the candidate are compared on rows neither trained on. The model that is registered is
then refit on every labelled row (``training.refit``): the newest rows are the only ones that describe
the drift, so they must reach the deployed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loopline import estimators
from loopline.errors import ConfigError, TrainingError
from loopline.labels import LabelKind

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from loopline.config import Project, SplitConfig

FEATURES = "features"


@dataclass
class Prepared:
    """The features at one version, split, with the model's input columns."""

    features_uri: str
    features_version: int
    input_columns: list[str]
    target: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    kind: LabelKind = "float"
    categorical: list[str] = field(default_factory=list)
    n_unlabelled: int = 0
    classes: list[Any] = field(default_factory=list)  # classifiers: every label in the labelled rows, sorted
    time_column: str | None = None
    notes: list[str] = field(default_factory=list)
    n_outside_window: int = 0

    def all_rows(self) -> pd.DataFrame:
        import pandas as pd

        return pd.concat([self.train, self.valid, self.test], ignore_index=True)

    def trained_until(self, frame: pd.DataFrame) -> datetime | None:
        """The newest event time in ``frame`` (None without a time column)."""
        if self.time_column is None or self.time_column not in frame.columns or frame.empty:
            return None
        value = frame[self.time_column].max()
        return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value


# ----------------------------------------------------------------------------- read
def read_features(project: Project, data_version: int | None = None) -> tuple[pd.DataFrame, int, str, Any]:
    """The whole features table at ``data_version`` (latest by default) as pandas, its version, URI and
    Arrow schema."""
    from loopline.tables import DeltaStore

    store = DeltaStore(project.storage_root, project.storage_options)
    version = store.version(FEATURES) if data_version is None else int(data_version)
    table = store.read(FEATURES, version=version)
    return table.to_pandas(), version, store.uri(FEATURES), table.schema


def _labelled(df: pd.DataFrame, target: str, kind: LabelKind, version: int) -> tuple[pd.DataFrame, int]:
    """Rows whose label has arrived (target not null), the target in its own type; and how many were left out."""
    import numpy as np

    mask = df[target].notna().to_numpy()
    n_out = int((~mask).sum())
    if n_out:
        df = df.loc[mask].reset_index(drop=True)
    if df.empty:
        raise TrainingError(
            f"every row of the features table (version {version}) has a null target {target!r}: no labels yet",
            hint="deliver labels (feedback with retraining.use_feedback_labels) or ingest labelled rows",
        )
    dtype = {"int": np.int64, "bool": np.bool_, "float": np.float64}.get(kind)
    if dtype is not None and df[target].dtype != dtype:
        df = df.assign(**{target: df[target].astype(dtype)})
    elif kind == "str" and df[target].dtype != object:
        df = df.assign(**{target: df[target].astype(str).astype(object)})
    return df, n_out


def _window(project: Project, df: pd.DataFrame) -> pd.DataFrame:
    """``training.window`` (event-time span) and ``training.window_rows`` (newest N rows)."""
    tc, col = project.config.training, project.config.model.time_column
    if col is not None and col in df.columns and (tc.window is not None or tc.window_rows is not None):
        df = df.sort_values(col, kind="stable").reset_index(drop=True)
        if tc.window is not None:
            df = df[df[col] >= df[col].max() - tc.window].reset_index(drop=True)
        if tc.window_rows is not None:
            df = df.iloc[-tc.window_rows :].reset_index(drop=True)
    elif tc.window_rows is not None:
        df = df.iloc[-tc.window_rows :].reset_index(drop=True)
    return df


# ----------------------------------------------------------------------------- split
def split_frame(
    df: pd.DataFrame,
    split: SplitConfig,
    time_column: str | None,
    file: str,
    unseen_after: datetime | None = None,
    notes: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / test: the latest rows are the test set (time), or a seeded permutation (random).

    ``unseen_after`` (the champion's training cutoff, time split only): of the newest rows, only those
    after it are test rows, so the champion is scored on rows it never trained on; the others go back
    to training."""
    import numpy as np

    n = len(df)
    n_test = max(1, round(n * split.test))
    n_valid = max(1, round(n * split.valid))
    if n - n_test - n_valid < 1:
        raise TrainingError(
            f"the features table has {n} labelled row(s); a train/validation/test split needs at least 3",
            hint="ingest more data or lower training.split.valid / training.split.test",
        )
    if split.method != "time":
        ordered = df.iloc[np.random.default_rng(split.seed).permutation(n)].reset_index(drop=True)
        n_train = n - n_valid - n_test
        return ordered.iloc[:n_train], ordered.iloc[n_train : n_train + n_valid], ordered.iloc[n_train + n_valid :]
    col = split.column or time_column
    if col is None:
        raise ConfigError(
            f"{file}: training.split.method is time, but neither training.split.column nor model.time_column is set",
            hint="set model.time_column (or training.split.column), or use training.split.method: random",
        )
    if col not in df.columns:
        raise TrainingError(
            f"the time split column {col!r} is not in the features table",
            hint=f"its columns: {', '.join(map(str, df.columns))}",
        )
    ordered = df.sort_values(col, kind="stable").reset_index(drop=True)
    if unseen_after is not None:
        split_rows = _split_after(ordered, col, unseen_after, n_test, n_valid, notes)
        if split_rows is not None:
            return split_rows
    n_train = n - n_valid - n_test
    return ordered.iloc[:n_train], ordered.iloc[n_train : n_train + n_valid], ordered.iloc[n_train + n_valid :]


def _split_after(
    ordered: pd.DataFrame, col: str, cutoff: datetime, n_test: int, n_valid: int, notes: list[str] | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """The split when the champion trained on every row up to ``cutoff``: the test rows are the newest half
    (at most ``n_test``) of the rows after it, which neither model trains on; the older new rows are
    training rows, so the candidate learns what changed (with all new rows held out it would only repeat
    the champion); validation rows come from the rows the champion saw."""
    import pandas as pd

    n = len(ordered)
    k = int((ordered[col] > pd.Timestamp(cutoff)).sum())
    if k == 0:
        if notes is not None:
            notes.append(
                f"no labelled rows after the champion's training cutoff {cutoff.isoformat()}: "
                "the champion is scored on test rows it trained on"
            )
        return None
    seen = ordered.iloc[: n - k]
    if len(seen) < 2:
        return None
    n_t = min(n_test, max(1, k // 2))
    n_v = min(n_valid, len(seen) - 1)
    train = pd.concat([seen.iloc[: len(seen) - n_v], ordered.iloc[n - k : n - n_t]], ignore_index=True)
    return train, seen.iloc[len(seen) - n_v :], ordered.iloc[n - n_t :]


# ----------------------------------------------------------------------------- prepare
def prepare(project: Project, data_version: int | None = None, unseen_after: datetime | None = None) -> Prepared:
    """Read the features at a pinned version, keep the labelled rows in the training window, check the
    columns and split them (``unseen_after``: see :func:`split_frame`)."""
    from loopline.labels import kind_of_arrow

    cfg = project.config
    df, version, uri, schema = read_features(project, data_version)
    if df.empty:
        raise TrainingError(
            f"the features table at version {version} is empty ({uri})", hint="run `loopline run ingest` first"
        )
    target = cfg.model.target
    if target not in df.columns:
        raise TrainingError(
            f"the features table (version {version}) has no target column {target!r} (model.target)",
            hint=f"its columns: {', '.join(map(str, df.columns))}",
        )
    cols = cfg.model.input_columns([str(c) for c in df.columns])
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TrainingError(
            f"the features table (version {version}) has no model input column(s) {missing} (model.features)",
            hint=f"its columns: {', '.join(map(str, df.columns))}",
        )
    if not cols:
        raise TrainingError(
            f"the features table (version {version}) has no model input columns",
            hint="set model.features, or add feature columns to the features hook output",
        )
    kind = kind_of_arrow(schema.field(target).type, cfg.model.task)
    df, n_unlabelled = _labelled(df, target, kind, version)
    n_all = len(df)
    df = _window(project, df)
    classes = _sorted_unique(df[target]) if cfg.model.task == "classification" else []
    if cfg.model.task == "classification" and len(classes) < 2:
        raise TrainingError(
            f"the target {target!r} has {len(classes)} class(es) in the labelled rows of features version {version} "
            f"({classes}); a classifier needs at least two",
            hint="ingest rows of another class, or check model.task",
        )
    notes: list[str] = []
    time_col = cfg.training.split.column or cfg.model.time_column
    train, valid, test = split_frame(df, cfg.training.split, time_col, project.config_path.name, unseen_after, notes)
    categorical = estimators.categorical_columns(df, cols)
    return Prepared(
        uri, version, cols, target, train, valid, test, kind, categorical, n_unlabelled, classes,
        time_col, notes, n_all - len(df),
    )  # fmt: skip


def _sorted_unique(y: pd.Series) -> list[Any]:
    import numpy as np

    return np.unique(y.to_numpy()).tolist()


def recency_weights(project: Project, frame: pd.DataFrame) -> np.ndarray | None:
    """``training.recency_half_life``: weight 0.5 ** (age / half-life), age from the newest row in ``frame``."""
    import numpy as np

    half_life = project.config.training.recency_half_life
    col = project.config.model.time_column
    if half_life is None or col is None or col not in frame.columns or frame.empty:
        return None
    age = (frame[col].max() - frame[col]).dt.total_seconds().to_numpy()
    return np.power(0.5, age / half_life.total_seconds())


def test_rows(project: Project, data_version: int | None = None) -> tuple[pd.DataFrame, int]:
    """The held-out test rows of a features version under the project's split config (for the gate)."""
    p = prepare(project, data_version)
    return p.test, p.features_version
